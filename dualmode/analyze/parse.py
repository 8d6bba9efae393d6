"""Parsing a module: its syntax tree, or where and why it is not valid Python."""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["BadSyntax", "ParsedModule", "parse_module"]


@dataclass(frozen=True)
class BadSyntax:
    """Why a module does not parse: the line and the parser's message."""

    line: int
    message: str


@dataclass(frozen=True, eq=False)
class ParsedModule:
    """A module's text and its syntax tree (None, and *error* set, when it does not parse).

    Compared by identity: comparing two trees would cost as much as parsing, and a new parse
    means new text, so what reads it is re-run (and backdated there if its own value is
    unchanged)."""

    text: str
    tree: ast.Module | None
    error: BadSyntax | None


def parse_module(text: str, path: str) -> ParsedModule:
    """*text* parsed; bad syntax is a :class:`BadSyntax` in the result, never raised."""
    try:
        return ParsedModule(text, ast.parse(text, path), None)
    except SyntaxError as exc:
        return ParsedModule(text, None, BadSyntax(exc.lineno or 1, exc.msg))
    except ValueError as exc:  # e.g. "source code string cannot contain null bytes"
        return ParsedModule(text, None, BadSyntax(1, str(exc)))
