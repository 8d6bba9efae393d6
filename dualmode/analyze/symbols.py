"""A module's symbols: its definitions (functions, classes) and its import statements.

Only statements are visited, never expressions: it is what keeps a pass over the standard
library's 1.2 million nodes to about a tenth of them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = [
    "LEAF_STATEMENTS",
    "Definition",
    "ImportStatement",
    "ModuleSymbols",
    "count_lines",
    "module_symbols",
]

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)  # a body, maybe an else


@dataclass(frozen=True)
class Definition:
    """A function or class: its dotted name inside the module and its line."""

    qualname: str
    line: int


@dataclass(frozen=True)
class ImportStatement:
    """One imported module of an ``import`` or ``from ... import`` statement.

    ``import a.b, c`` gives two (``module`` "a.b" and "c", no ``names``); ``from .m import
    x, y`` gives one (``module`` "m", ``level`` 1, ``names`` ("x", "y")). ``at_import_time``
    is False for imports inside a function body or under ``if TYPE_CHECKING:``, which do not
    run when the module is imported (they make no edge of the import graph).
    """

    line: int
    module: str
    level: int
    names: tuple[str, ...]
    at_import_time: bool


@dataclass(frozen=True)
class ModuleSymbols:
    """What a module defines and imports."""

    lines: int
    functions: tuple[Definition, ...]
    classes: tuple[Definition, ...]
    imports: tuple[ImportStatement, ...]


def count_lines(text: str) -> int:
    """Lines of *text*, the last one counted whether or not it ends with a newline."""
    return text.count("\n") + (bool(text) and not text.endswith("\n"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


# Statements that hold no statements, other than imports: most of a module, skipped at once.
LEAF_STATEMENTS = frozenset(
    {
        ast.Expr,
        ast.Assign,
        ast.AugAssign,
        ast.AnnAssign,
        ast.Return,
        ast.Pass,
        ast.Raise,
        ast.Assert,
        ast.Delete,
        ast.Global,
        ast.Nonlocal,
        ast.Break,
        ast.Continue,
    }
)


def module_symbols(tree: ast.Module, text: str) -> ModuleSymbols:
    """The definitions and imports of *tree*, parsed from *text*."""
    functions: list[Definition] = []
    classes: list[Definition] = []
    imports: list[ImportStatement] = []

    def visit(body: list[ast.stmt], prefix: str, at_import_time: bool) -> None:
        for node in body:
            kind = type(node)
            if kind in LEAF_STATEMENTS:
                continue
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                assert isinstance(node, _FUNCTIONS)
                functions.append(Definition(prefix + node.name, node.lineno))
                visit(node.body, f"{prefix}{node.name}.", False)
            elif kind is ast.ClassDef:
                assert isinstance(node, ast.ClassDef)
                classes.append(Definition(prefix + node.name, node.lineno))
                visit(node.body, f"{prefix}{node.name}.", at_import_time)
            elif kind is ast.Import:
                assert isinstance(node, ast.Import)
                for alias in node.names:
                    imports.append(ImportStatement(node.lineno, alias.name, 0, (), at_import_time))
            elif kind is ast.ImportFrom:
                assert isinstance(node, ast.ImportFrom)
                names = tuple(alias.name for alias in node.names)
                module = node.module or ""
                imports.append(
                    ImportStatement(node.lineno, module, node.level, names, at_import_time)
                )
            elif kind is ast.If:
                assert isinstance(node, ast.If)
                visit(node.body, prefix, at_import_time and not _is_type_checking(node.test))
                visit(node.orelse, prefix, at_import_time)
            elif kind is ast.Try or kind is ast.TryStar:
                assert isinstance(node, ast.Try | ast.TryStar)
                visit(node.body, prefix, at_import_time)
                for handler in node.handlers:
                    visit(handler.body, prefix, at_import_time)
                visit(node.orelse, prefix, at_import_time)
                visit(node.finalbody, prefix, at_import_time)
            elif kind is ast.Match:
                assert isinstance(node, ast.Match)
                for case in node.cases:
                    visit(case.body, prefix, at_import_time)
            elif kind in _LOOPS:
                assert isinstance(node, _LOOPS)
                visit(node.body, prefix, at_import_time)
                visit(getattr(node, "orelse", []), prefix, at_import_time)
            # anything else holds no statements (``type X = ...`` on 3.12, ...)

    visit(tree.body, "", True)
    return ModuleSymbols(count_lines(text), tuple(functions), tuple(classes), tuple(imports))
