"""What the analyzer reports: a :class:`Finding` of one of five kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMPLEX_FUNCTION",
    "Finding",
    "IMPORT_CYCLE",
    "KINDS",
    "SYNTAX_ERROR",
    "UNRESOLVED_IMPORT",
    "UNUSED_IMPORT",
    "changes",
]

SYNTAX_ERROR = "syntax-error"
UNRESOLVED_IMPORT = "unresolved-import"
UNUSED_IMPORT = "unused-import"
IMPORT_CYCLE = "import-cycle"
COMPLEX_FUNCTION = "complex-function"
KINDS = (SYNTAX_ERROR, UNRESOLVED_IMPORT, UNUSED_IMPORT, IMPORT_CYCLE, COMPLEX_FUNCTION)


@dataclass(frozen=True, order=True)
class Finding:
    """One finding. Ordered by path, line, kind, message: the order of every report, on every
    backend. *path* is the file's path as given on the command line (joined with its place
    under a directory given there)."""

    path: str
    line: int
    kind: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "line": self.line, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.message}"


def changes(
    before: tuple[Finding, ...], after: tuple[Finding, ...]
) -> tuple[list[Finding], list[Finding]]:
    """The findings *after* has that *before* has not, and those it lost, each sorted."""
    old, new = set(before), set(after)
    return sorted(new - old), sorted(old - new)
