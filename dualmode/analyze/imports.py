"""Resolving import statements to the analyzed modules.

An absolute import resolves to the longest prefix of its dotted name that is an analyzed
module or package (``import a.b.c`` runs ``a/b/c.py``); ``from m import x`` to ``m.x`` when
that is a module, else to ``m``. Modules outside the analyzed tree (the standard library
for a project, C extensions) are simply not edges. A relative import resolves against the
importing module's package; one that names no analyzed module, or climbs above the
top-level package, is an ``unresolved-import`` finding.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .findings import UNRESOLVED_IMPORT, Finding
from .symbols import ImportStatement

__all__ = ["ResolvedImports", "module_names", "resolve_imports"]


def module_names(modules: Iterable[str]) -> frozenset[str]:
    """Every analyzed module and every package above one (namespace packages included)."""
    names: set[str] = set()
    for module in modules:
        parts = module.split(".")
        names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(names)


@dataclass(frozen=True)
class ResolvedImports:
    """A module's edges of the import graph (the modules it imports when it is imported,
    with the line of the first such import) and its unresolved relative imports."""

    edges: tuple[tuple[str, int], ...]
    unresolved: tuple[Finding, ...]


def _longest_known(dotted: str, known: Collection[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _relative_base(module: str, is_package: bool, level: int) -> str | None:
    """The package that ``from <level dots> import`` starts from, or None above the top."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(parts):
        return None
    return ".".join(parts[: len(parts) - (level - 1)])


def resolve_imports(
    path: str,
    module: str,
    is_package: bool,
    imports: Iterable[ImportStatement],
    known: Collection[str],
) -> ResolvedImports:
    """Resolve *module*'s *imports* against the *known* module names (:func:`module_names`)."""
    edges: dict[str, int] = {}
    unresolved: list[Finding] = []
    for stmt in imports:
        targets: list[str] = []
        if stmt.level:
            base = _relative_base(module, is_package, stmt.level)
            dots = "." * stmt.level
            if base is None:
                unresolved.append(
                    Finding(
                        path,
                        stmt.line,
                        UNRESOLVED_IMPORT,
                        f"relative import '{dots}{stmt.module}' climbs above the top-level "
                        f"package of {module!r}",
                    )
                )
                continue
            target = f"{base}.{stmt.module}".strip(".") if stmt.module else base
            if target not in known:
                unresolved.append(
                    Finding(
                        path,
                        stmt.line,
                        UNRESOLVED_IMPORT,
                        f"relative import '{dots}{stmt.module}' names {target!r}, which is not "
                        "an analyzed module or package",
                    )
                )
                continue
            # `from . import sub` imports the submodule; the package is the importer's own
            targets.extend(f"{target}.{n}" for n in stmt.names if f"{target}.{n}" in known)
            if not targets:
                targets.append(target)
        else:
            found = _longest_known(stmt.module, known)
            if found is not None:
                subs = [f"{stmt.module}.{n}" for n in stmt.names]
                targets.extend(s for s in subs if s in known)
                if not targets or found != stmt.module:
                    targets.append(found)
        if stmt.at_import_time:
            for target in targets:
                if target != module:
                    edges.setdefault(target, stmt.line)
    return ResolvedImports(tuple(sorted(edges.items())), tuple(unresolved))
