"""Imports never used in their scope, as pyflakes reports them ("'x' imported but unused").

Which names a scope uses comes from the compiler's symbol table (:mod:`symtable`, built in C:
one pass over a module's names costs a fraction of visiting its expressions in Python);
which statement bound a name, and in what order, from the syntax tree's statements. The
rules are pyflakes' (its ``checkDeadScopes``):

- every scope but a class body is checked; ``from __future__`` imports are always used;
- the binding reported is the last one a scope made for that name; a later plain binding of
  the name (assignment, ``def``, ``del``, ...) replaces the import, which is then not reported;
- a name is used where the scope reads it, where a nested scope reads it from there, in an
  annotation (postponed ones read after the module), or, at module level, in ``__all__``;
  reading ``Y`` of ``import X as Y`` uses the scope's ``import X.sub`` too;
- ``from m import *`` is used when the module reads a name it does not define.

Deliberate differences (docs/analyze.md): a read of a module-level name *before* the import
that binds it counts as a use here (pyflakes reports the name undefined, then the import
unused), and strings passed to ``typing.cast`` or ``TypeVar(bound=...)`` are not read as
annotations.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any

from .findings import UNUSED_IMPORT, Finding

__all__ = ["unused_imports"]

# The C symbol table itself: a dict of flags per scope, where the symtable module's wrappers
# would make an object per symbol. (Imported by name: it has no type stubs.)
_symtable: Any = importlib.import_module("_symtable")

_USE = _symtable.USE
_BOUND = _symtable.DEF_LOCAL | _symtable.DEF_PARAM | _symtable.DEF_IMPORT
_SCOPE_OFF, _SCOPE_MASK = _symtable.SCOPE_OFF, _symtable.SCOPE_MASK
_GLOBALS = (_symtable.GLOBAL_IMPLICIT, _symtable.GLOBAL_EXPLICIT)
# Names defined without a binding statement (pyflakes' builtin_vars and special cases).
_BUILTINS = frozenset(dir(builtins)) | {
    "__file__",
    "__builtins__",
    "__annotations__",
    "WindowsError",
    "__module__",
    "__qualname__",
}
# 3.12 inlines comprehensions into the scope around them (PEP 709) and its symbol table
# drops what they read: an import read only there needs a look at the tree.
_INLINED_COMPREHENSIONS = sys.version_info >= (3, 12)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Statements that bind nothing and hold no statements: skipped at once.
_INERT = frozenset(
    {ast.Expr, ast.Return, ast.Pass, ast.Raise, ast.Assert, ast.Break, ast.Continue}
    | {ast.Global, ast.Nonlocal}
)


@dataclass
class _Import:
    order: int
    line: int
    display: str  # as pyflakes shows it: 'a.b', 'a as b', 'm.x', '.x', 'm.*'
    alias_of: str | None = None  # X of `import X as Y` (X without dots)


@dataclass
class _Scope:
    node: ast.AST
    is_class: bool
    parent: _Scope | None
    imports: dict[str, _Import] = field(default_factory=dict)
    stars: list[_Import] = field(default_factory=list)
    rebound: dict[str, int] = field(default_factory=dict)  # name: order of its last binding
    used: set[str] = field(default_factory=set)  # read in string annotations or __all__
    annotated: set[str] = field(default_factory=set)  # `name: T`, no value
    order: int = 0

    def tick(self) -> int:
        self.order += 1
        return self.order


def _import_from_display(module: str, alias: ast.alias) -> tuple[str, str]:
    real = alias.name
    name = alias.asname or real
    full = module + real if module.endswith(".") else f"{module}.{real}"
    return name, (f"{full} as {name}" if real != name else full)


def _targets(node: ast.expr | None, out: list[str]) -> list[str]:
    if isinstance(node, ast.Name):
        out.append(node.id)
    elif isinstance(node, ast.Tuple | ast.List):
        for elt in node.elts:
            _targets(elt, out)
    elif isinstance(node, ast.Starred):
        _targets(node.value, out)
    return out


def _all_names(value: ast.expr | None) -> list[str]:
    """The strings of ``__all__ = [...]`` (or ``(...)``, or ``[...] + [...]``), as pyflakes'
    ExportBinding reads them."""
    parts: list[ast.expr] = []
    while isinstance(value, ast.BinOp) and isinstance(value.right, ast.List | ast.Tuple):
        parts.append(value.right)
        value = value.left
    if isinstance(value, ast.List | ast.Tuple):
        parts.append(value)
    return [
        elt.value
        for part in reversed(parts)
        if isinstance(part, ast.List | ast.Tuple)
        for elt in part.elts
        if isinstance(elt, ast.Constant) and isinstance(elt.value, str)
    ]


def _annotation_strings(node: ast.expr | None, out: list[str]) -> list[str]:
    """The string constants of an annotation (a forward reference), not inside Literal[]."""
    if node is None:
        return out
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            out.append(node.value)
        return out
    if isinstance(node, ast.Subscript):
        head = node.value
        name = head.id if isinstance(head, ast.Name) else getattr(head, "attr", "")
        _annotation_strings(head, out)
        if name != "Literal":
            _annotation_strings(node.slice, out)
        return out
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            _annotation_strings(child, out)
    return out


class _Collector:
    """Walks a module's statements, scope by scope, recording what pyflakes binds."""

    def __init__(self) -> None:
        self.scopes: list[_Scope] = []
        self.exported: list[str] = []
        self.deleted: set[str] = set()  # names a module-level `del` unbinds
        self.annotation_reads: list[tuple[_Scope, str, bool]] = []  # scope, name, postponed
        self.postponed = False  # under `from __future__ import annotations`

    def scope(self, node: ast.AST, is_class: bool, parent: _Scope | None) -> _Scope:
        scope = _Scope(node, is_class, parent)
        self.scopes.append(scope)
        return scope

    def annotation(self, scope: _Scope, node: ast.expr | None) -> None:
        """Note the names *node* reads; they are resolved after the walk, as pyflakes reads
        postponed annotations once the module is done."""
        if node is None:
            return
        # Read here even under `from __future__ import annotations`, whose annotations the
        # 3.11 symbol table leaves out.
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                self.annotation_reads.append((scope, sub.id, self.postponed))
        for text in _annotation_strings(node, []):
            try:
                parsed = ast.parse(text.strip(), mode="eval")
            except (SyntaxError, ValueError):
                continue
            for sub in ast.walk(parsed):
                if isinstance(sub, ast.Name):  # a string annotation is always postponed
                    self.annotation_reads.append((scope, sub.id, True))

    def resolve_annotations(self) -> None:
        """Mark each name an annotation read used in the scope the read finds it in: the
        nearest scope that imports it (class bodies only their own). A postponed read stops
        at a scope that annotates the name (``name: T`` with no value), as pyflakes' does."""
        for scope, name, postponed in self.annotation_reads:
            here: _Scope | None = scope
            while here is not None:
                if postponed and name in here.annotated:
                    break
                if name in here.imports and (here is scope or not here.is_class):
                    here.used.add(name)
                    break
                here = here.parent

    def arguments(self, scope: _Scope, args: ast.arguments) -> None:
        for arg in (*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg):
            if arg is not None:
                self.annotation(scope, arg.annotation)

    def bind(self, scope: _Scope, names: list[str]) -> None:
        order = scope.tick()
        for name in names:
            scope.rebound[name] = order

    def visit(self, body: list[ast.stmt], scope: _Scope) -> None:
        for node in body:
            if type(node) in _INERT:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        name = alias.asname
                        short = alias.name.rsplit(".", 1)[-1] == name
                        display = alias.name if short else f"{alias.name} as {name}"
                    else:
                        name, display = alias.name.split(".", 1)[0], alias.name
                    alias_of = alias.name if alias.asname and "." not in alias.name else None
                    scope.imports[name] = _Import(scope.tick(), node.lineno, display, alias_of)
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if module == "__future__":
                    self.postponed |= any(a.name == "annotations" for a in node.names)
                    continue
                for alias in node.names:
                    if alias.name == "*":
                        star = f"from {module} import *" if module.endswith(".") else module + ".*"
                        scope.stars.append(_Import(scope.tick(), node.lineno, star))
                    else:
                        name, display = _import_from_display(module, alias)
                        scope.imports[name] = _Import(scope.tick(), node.lineno, display)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.arguments(scope, node.args)
                self.annotation(scope, node.returns)
                self.bind(scope, [node.name])
                self.visit(node.body, self.scope(node, False, scope))
            elif isinstance(node, ast.ClassDef):
                self.bind(scope, [node.name])
                self.visit(node.body, self.scope(node, True, scope))
            elif isinstance(node, ast.Assign):
                names: list[str] = []
                for target in node.targets:
                    _targets(target, names)
                self.bind(scope, names)
                if scope.parent is None and "__all__" in names:
                    self.exported = _all_names(node.value)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                names = _targets(node.target, [])
                if isinstance(node, ast.AnnAssign):
                    self.annotation(scope, node.annotation)
                    if node.value is None:
                        scope.annotated.update(names)
                if node.value is not None:
                    self.bind(scope, names)
                    if scope.parent is None and names == ["__all__"]:
                        added = _all_names(node.value)
                        grow = isinstance(node, ast.AugAssign)
                        self.exported = [*self.exported, *added] if grow else added
            elif isinstance(node, ast.For | ast.AsyncFor):
                self.bind(scope, _targets(node.target, []))
                self.visit(node.body, scope)
                self.visit(node.orelse, scope)
            elif isinstance(node, ast.With | ast.AsyncWith):
                names = []
                for item in node.items:
                    _targets(item.optional_vars, names)
                self.bind(scope, names)
                self.visit(node.body, scope)
            elif isinstance(node, ast.Delete):
                names = []
                for target in node.targets:
                    _targets(target, names)
                self.bind(scope, names)
                if scope.parent is None:
                    self.deleted.update(names)
            elif isinstance(node, ast.Try | ast.TryStar):
                self.visit(node.body, scope)
                for handler in node.handlers:
                    if handler.name:
                        self.bind(scope, [handler.name])
                    self.visit(handler.body, scope)
                self.visit(node.orelse, scope)
                self.visit(node.finalbody, scope)
            elif isinstance(node, ast.If | ast.While):
                self.visit(node.body, scope)
                self.visit(node.orelse, scope)
            elif isinstance(node, ast.Match):
                for case in node.cases:
                    self.visit(case.body, scope)


def _entries(top: object) -> dict[tuple[str, int], object]:
    """The symbol table's function and class scopes, by (name, line of the def)."""
    found: dict[tuple[str, int], object] = {}
    stack = list(top.children)  # type: ignore[attr-defined]
    while stack:
        entry = stack.pop()
        found.setdefault((entry.name, entry.lineno), entry)
        stack.extend(entry.children)
    return found


def _descendants(entry: object) -> list[dict[str, int]]:
    """The symbols of every scope nested in *entry*."""
    out: list[dict[str, int]] = []
    stack = list(entry.children)  # type: ignore[attr-defined]
    while stack:
        child = stack.pop()
        out.append(child.symbols)
        stack.extend(child.children)
    return out


def _global_reads(top: object) -> set[str]:
    """The module-level names that nested scopes read: as globals, or in a class body that
    also assigns them (``policy = policy.default``: the read, before the assignment, finds
    the module's; the symbol table cannot say which came first, so it counts as a read)."""
    reads: set[str] = set()
    stack = list(top.children)  # type: ignore[attr-defined]
    while stack:
        child = stack.pop()
        in_class = child.type == _symtable.TYPE_CLASS
        for name, flags in child.symbols.items():
            if not flags & _USE:
                continue
            scope = (flags >> _SCOPE_OFF) & _SCOPE_MASK
            if scope in _GLOBALS or (in_class and scope == _symtable.LOCAL):
                reads.add(name)
        stack.extend(child.children)
    return reads


def _read_in_comprehension(node: ast.AST, name: str) -> bool:
    """Whether a comprehension under *node* (not under a nested function) reads *name*."""
    for sub in ast.walk(node):
        if isinstance(sub, _COMPREHENSIONS) and any(
            isinstance(n, ast.Name) and n.id == name for n in ast.walk(sub)
        ):
            return True
    return False


def unused_imports(tree: ast.Module, text: str, path: str) -> tuple[Finding, ...]:
    """The imports of *tree* that its scopes never use, as pyflakes reports them (in source
    order). *text* is the source *tree* was parsed from (the symbol table is built from it)."""
    collector = _Collector()
    module = collector.scope(tree, False, None)
    collector.visit(tree.body, module)
    collector.resolve_annotations()
    module.used.update(collector.exported)
    if not any(s.imports or s.stars for s in collector.scopes):
        return ()
    top = _symtable.symtable(text, path, "exec")
    entries = _entries(top)
    found: list[tuple[int, int, str]] = []
    for scope in collector.scopes:
        if scope.is_class or not (scope.imports or scope.stars):
            continue
        if scope is module:
            entry: object = top
        else:
            node = scope.node
            entry = entries.get((node.name, node.lineno))  # type: ignore[attr-defined]
            if entry is None:
                continue
        symbols: dict[str, int] = entry.symbols  # type: ignore[attr-defined]
        global_reads: set[str] | None = None
        unused: dict[str, _Import] = {}
        for name, binding in scope.imports.items():
            if name in scope.used or scope.rebound.get(name, 0) > binding.order:
                continue
            flags = symbols.get(name, 0)
            if flags & (_USE | _symtable.DEF_GLOBAL | _symtable.DEF_NONLOCAL):
                continue  # read here, or bound in a scope around (pyflakes: not this one's)
            if scope is module:
                if global_reads is None:
                    global_reads = _global_reads(top)
                if name in global_reads:
                    continue
            elif (flags >> _SCOPE_OFF) & _SCOPE_MASK == _symtable.CELL:
                continue
            if _INLINED_COMPREHENSIONS and _read_in_comprehension(scope.node, name):
                continue
            unused[name] = binding
        # pyflakes: reading the alias Y of `import X as Y` uses the scope's binding of X too
        # (`import multiprocessing as mp; import multiprocessing.connection`)
        for name, binding in scope.imports.items():
            if binding.alias_of is not None and name not in unused:
                unused.pop(binding.alias_of, None)
        found.extend((b.line, b.order, b.display) for b in unused.values())
        if scope.stars and not _reads_undefined(top, collector, path):
            found.extend((star.line, star.order, star.display) for star in scope.stars)
    found.sort()
    return tuple(
        Finding(path, line, UNUSED_IMPORT, f"'{display}' imported but unused")
        for line, _, display in found
    )


def _reads_undefined(top: object, collector: _Collector, path: str) -> bool:
    """Whether the module reads a name it does not define (which pyflakes then supposes a
    ``*`` import defines, marking them used), or one a module-level ``del`` removes (pyflakes
    reads function bodies after the module's statements, so after the ``del``)."""
    module: dict[str, int] = top.symbols  # type: ignore[attr-defined]
    scopes = [module, *_descendants(top)]
    deleted = collector.deleted
    if deleted and any(s.get(n, 0) & _USE for s in scopes for n in deleted):
        return True
    defined = {n for n, f in module.items() if f & _BOUND}
    for symbols in scopes[1:]:
        defined.update(n for n, f in symbols.items() if f & _symtable.DEF_GLOBAL and f & _BOUND)
    if path.endswith("__init__.py"):
        defined.add("__path__")
    for symbols in scopes:
        for name, flags in symbols.items():
            scope = (flags >> _SCOPE_OFF) & _SCOPE_MASK
            if flags & _USE and scope in _GLOBALS and name not in defined and name not in _BUILTINS:
                return True
    return any(name not in defined and name not in _BUILTINS for name in collector.exported)
