"""The analyzer's queries: a :class:`dualmode.Database` over the files' text.

Per file: ``parse`` (``local=True``: a syntax tree stays in the process that parsed it and
is never pickled) and ``file_facts``, everything one parse gives, which the workers
compute: coarse on purpose, as a worker process asks the job table's owner once for each
query it needs. Then, cheap and in the calling process: ``symbols``, ``complexity`` and
``unused_imports`` (projections of ``file_facts``, each backdated on its own),
``resolved_imports`` and ``file_findings``. Over the tree: ``module_index``,
``import_graph``, ``import_cycles`` and ``report``.

Inputs: ``db.source[path]`` (the file's text) and ``db.layout[LAYOUT]`` (which files there
are, and their module names). Changing one file's text re-executes that file's queries and
the few over the tree; every other file's stay green.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import dualmode as dm

from .complexity import FunctionComplexity, function_complexities
from .cycles import strongly_connected
from .files import SourceFile
from .findings import COMPLEX_FUNCTION, IMPORT_CYCLE, SYNTAX_ERROR, Finding
from .imports import ResolvedImports, module_names, resolve_imports
from .parse import BadSyntax, ParsedModule, parse_module
from .report import ComplexFunction, Report
from .symbols import ModuleSymbols, count_lines, module_symbols
from .unused import unused_imports

__all__ = ["LAYOUT", "Analysis", "FileFacts", "ModuleIndex", "file_facts_of"]

LAYOUT = "layout"  # the one key of the layout input
DEFAULT_MAX_COMPLEXITY = 10  # mccabe's customary threshold
MOST_COMPLEX = 10
CYCLE_MEMBERS_SHOWN = 8


@dataclass(frozen=True)
class FileFacts:
    """What one parse of a file gives (:meth:`Analysis.file_facts`)."""

    symbols: ModuleSymbols
    complexity: tuple[FunctionComplexity, ...]
    unused_imports: tuple[Finding, ...]
    syntax_error: BadSyntax | None


def file_facts_of(parsed: ParsedModule, path: str) -> FileFacts:
    """Everything one parse of *path* gives (the body of :meth:`Analysis.file_facts`, and
    what ``benchmarks/bench_analyze.py`` runs with no engine to measure the ceiling)."""
    tree = parsed.tree
    if tree is None:
        symbols = ModuleSymbols(count_lines(parsed.text), (), (), ())  # lines still count
        return FileFacts(symbols, (), (), parsed.error)
    symbols = module_symbols(tree, parsed.text)
    complexity = function_complexities(tree)
    try:
        unused = unused_imports(tree, parsed.text, path)
    except SyntaxError as exc:  # the symbol table's (`nonlocal x` at module level, ...)
        return FileFacts(symbols, complexity, (), BadSyntax(exc.lineno or 1, exc.msg))
    return FileFacts(symbols, complexity, unused, None)


@dataclass(frozen=True)
class ModuleIndex:
    """Each analyzed file's module (and whether it is a package), and every module name
    that an import can resolve to."""

    by_path: dict[str, tuple[str, bool]]
    known: frozenset[str]


class Analysis(dm.Database):
    """A Python code analyzer: set ``layout`` and every file's ``source``, then ask
    ``report()`` (after ``file_facts.prefetch(paths)`` to work on every worker).

    *max_complexity*: a function whose complexity is above it is a ``complex-function``
    finding. Other keyword arguments (``backend``, ``workers``) go to :class:`dm.Database`.
    """

    source = dm.input()
    layout = dm.input()

    def __init__(self, *, max_complexity: int = DEFAULT_MAX_COMPLEXITY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_complexity = max_complexity

    # -- per file ----------------------------------------------------------------------------

    @dm.query(local=True)
    def parse(self, path: str) -> ParsedModule:
        return parse_module(self.source[path], path)

    @dm.query
    def file_facts(self, path: str) -> FileFacts:
        """Everything one parse of *path* gives: the unit of parallel work (a worker asks
        the owner of the job table once per query it needs, so one query does it all)."""
        return file_facts_of(self.parse(path), path)

    # Projections of file_facts: each backdates on its own, so an edit inside a function body
    # leaves symbols (and the import graph after it) green.

    @dm.query
    def symbols(self, path: str) -> ModuleSymbols:
        return self.file_facts(path).symbols

    @dm.query
    def complexity(self, path: str) -> tuple[FunctionComplexity, ...]:
        return self.file_facts(path).complexity

    @dm.query
    def unused_imports(self, path: str) -> tuple[Finding, ...]:
        return self.file_facts(path).unused_imports

    @dm.query
    def resolved_imports(self, path: str) -> ResolvedImports:
        index = self.module_index()
        module, is_package = index.by_path[path]
        imports = self.symbols(path).imports
        return resolve_imports(path, module, is_package, imports, index.known)

    @dm.query
    def file_findings(self, path: str) -> tuple[Finding, ...]:
        """Every finding of one file but import cycles (which are the tree's), sorted."""
        error = self.file_facts(path).syntax_error
        found = [] if error is None else [Finding(path, error.line, SYNTAX_ERROR, error.message)]
        found += self.unused_imports(path)
        found += self.resolved_imports(path).unresolved
        limit = self.max_complexity
        found += (
            Finding(
                path,
                f.line,
                COMPLEX_FUNCTION,
                f"{f.qualname} has cyclomatic complexity {f.complexity} (threshold {limit})",
            )
            for f in self.complexity(path)
            if f.complexity > limit
        )
        return tuple(sorted(found))

    # -- over the tree -----------------------------------------------------------------------

    @dm.query
    def module_index(self) -> ModuleIndex:
        files: tuple[SourceFile, ...] = self.layout[LAYOUT]
        by_path = {f.path: (f.module, f.is_package) for f in files}
        return ModuleIndex(by_path, module_names(f.module for f in files))

    @dm.query
    def import_graph(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Each module's imports of analyzed modules, with the line of each: {module: ((target,
        line), ...)}."""
        index = self.module_index()
        return {
            module: self.resolved_imports(path).edges
            for path, (module, _) in sorted(index.by_path.items())
        }

    @dm.query
    def import_cycles(self) -> tuple[tuple[str, ...], ...]:
        graph = self.import_graph()
        return strongly_connected({m: [t for t, _ in edges] for m, edges in graph.items()})

    @dm.query
    def report(self) -> Report:
        files: tuple[SourceFile, ...] = self.layout[LAYOUT]
        lines = functions = classes = 0
        findings: list[Finding] = []
        functions_of: list[ComplexFunction] = []
        for f in files:
            symbols = self.symbols(f.path)
            lines += symbols.lines
            functions += len(symbols.functions)
            classes += len(symbols.classes)
            findings += self.file_findings(f.path)
            functions_of += (ComplexFunction(f.path, c) for c in self.complexity(f.path))
        graph = self.import_graph()
        cycles = self.import_cycles()
        findings += self._cycle_findings(graph, cycles)
        most_complex = heapq.nsmallest(
            MOST_COMPLEX,
            functions_of,
            key=lambda c: (-c.function.complexity, c.path, c.function.line),
        )
        return Report(
            files=len(files),
            lines=lines,
            functions=functions,
            classes=classes,
            import_edges=sum(len(edges) for edges in graph.values()),
            cycles=cycles,
            most_complex=tuple(most_complex),
            findings=tuple(sorted(findings)),
        )

    def _cycle_findings(
        self, graph: dict[str, tuple[tuple[str, int], ...]], cycles: tuple[tuple[str, ...], ...]
    ) -> list[Finding]:
        """One finding per cycle, at its first module's first import of another member."""
        paths = {module: path for path, (module, _) in self.module_index().by_path.items()}
        found = []
        for cycle in cycles:
            first = cycle[0]
            members = set(cycle)
            line = min((ln for target, ln in graph[first] if target in members), default=1)
            shown = ", ".join(cycle[:CYCLE_MEMBERS_SHOWN])
            more = len(cycle) - CYCLE_MEMBERS_SHOWN
            if more > 0:
                shown += f" and {more} more"
            found.append(
                Finding(
                    paths[first],
                    line,
                    IMPORT_CYCLE,
                    f"import cycle of {len(cycle)} modules: {shown}",
                )
            )
        return found
