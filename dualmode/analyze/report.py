"""The report of one analysis: what the rich summary and ``--json`` show.

Everything in a :class:`Report` is a function of the analyzed files alone (no times, no
backend), so two backends' reports of the same tree compare equal (``--compare``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .complexity import FunctionComplexity
from .findings import KINDS, Finding

__all__ = ["ComplexFunction", "Report"]


@dataclass(frozen=True)
class ComplexFunction:
    """A function in the report's top 10 by complexity, and its file."""

    path: str
    function: FunctionComplexity


@dataclass(frozen=True)
class Report:
    """Totals over the analyzed files, the import cycles (largest first), the most complex
    functions and every finding, sorted."""

    files: int
    lines: int
    functions: int
    classes: int
    import_edges: int
    cycles: tuple[tuple[str, ...], ...]
    most_complex: tuple[ComplexFunction, ...]
    findings: tuple[Finding, ...]

    def by_kind(self) -> dict[str, int]:
        """Findings per kind, every kind listed (0 when none)."""
        counts = Counter(f.kind for f in self.findings)
        return {kind: counts.get(kind, 0) for kind in KINDS}

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "functions": self.functions,
            "classes": self.classes,
            "import_edges": self.import_edges,
            "import_cycles": [list(c) for c in self.cycles],
            "most_complex": [
                {
                    "path": c.path,
                    "function": c.function.qualname,
                    "line": c.function.line,
                    "complexity": c.function.complexity,
                }
                for c in self.most_complex
            ],
            "findings_by_kind": self.by_kind(),
            "findings": [f.to_json() for f in self.findings],
        }
