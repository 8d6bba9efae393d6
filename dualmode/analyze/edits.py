"""The synthetic edits of ``--edit N``: in each chosen file, a statement added inside a
function body, and an import added at the end of the module."""

from __future__ import annotations

import ast
from collections.abc import Sequence

__all__ = ["ADDED_IMPORT", "edit_source", "pick_files"]

ADDED_IMPORT = "import keyword as _dualmode_edit  # added by dualmode analyze --edit"


def _first_body_line(tree: ast.Module, lines: list[str]) -> tuple[int, str] | None:
    """(index, indentation) of the first statement of a function body that starts its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0]
            line = lines[first.lineno - 1]
            indent = line[: first.col_offset]
            if not indent.strip():
                return first.lineno - 1, indent
    return None


def edit_source(text: str) -> str | None:
    """*text* with both edits, or None when it has no function to edit (or does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    lines = text.splitlines(keepends=True)
    found = _first_body_line(tree, lines)
    if found is None:
        return None
    index, indent = found
    lines.insert(index, f"{indent}_dualmode_edit = None  # added by dualmode analyze --edit\n")
    edited = "".join(lines)
    if not edited.endswith("\n"):
        edited += "\n"
    return edited + ADDED_IMPORT + "\n"


def pick_files(paths: Sequence[str], count: int) -> list[str]:
    """*count* paths spread evenly over *paths* (sorted): the same choice on every run."""
    if count <= 0 or not paths:
        return []
    step = len(paths) / min(count, len(paths))
    return [paths[int(i * step)] for i in range(min(count, len(paths)))]
