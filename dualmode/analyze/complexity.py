"""Cyclomatic complexity of each function, counted on statements as mccabe does: 1, plus 1
for each ``if``/``elif``, ``for``, ``while``, ``except`` clause and ``case`` clause.

Boolean operators and comprehensions are not counted (mccabe does not count them either),
so only statements are visited. A nested function or class method is a function of its own,
and adds nothing to the function around it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["FunctionComplexity", "function_complexities"]

from .symbols import LEAF_STATEMENTS as _LEAVES


@dataclass(frozen=True, order=True)
class FunctionComplexity:
    """A function's complexity, its dotted name inside the module, and its line."""

    complexity: int
    qualname: str
    line: int


def function_complexities(tree: ast.Module) -> tuple[FunctionComplexity, ...]:
    """Every function and method of *tree*, in source order."""
    found: list[FunctionComplexity] = []

    def branches(body: list[ast.stmt], prefix: str) -> int:
        """Decision points of *body*; records the functions nested in it on the way."""
        count = 0
        for node in body:
            kind = type(node)
            if kind in _LEAVES:
                continue
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                function(node, prefix)  # type: ignore[arg-type]
            elif kind is ast.ClassDef:
                branches(node.body, f"{prefix}{node.name}.")  # type: ignore[attr-defined]
            elif kind is ast.If or kind is ast.While or kind is ast.For or kind is ast.AsyncFor:
                count += 1 + branches(node.body, prefix)  # type: ignore[attr-defined]
                count += branches(node.orelse, prefix)  # type: ignore[attr-defined]
            elif kind is ast.Try or kind is ast.TryStar:
                assert isinstance(node, ast.Try | ast.TryStar)
                count += len(node.handlers) + branches(node.body, prefix)
                for handler in node.handlers:
                    count += branches(handler.body, prefix)
                count += branches(node.orelse, prefix) + branches(node.finalbody, prefix)
            elif kind is ast.Match:
                assert isinstance(node, ast.Match)
                count += len(node.cases)
                for case in node.cases:
                    count += branches(case.body, prefix)
            elif kind is ast.With or kind is ast.AsyncWith:
                count += branches(node.body, prefix)  # type: ignore[attr-defined]
        return count

    def function(node: ast.FunctionDef | ast.AsyncFunctionDef, prefix: str) -> None:
        index = len(found)
        found.append(FunctionComplexity(0, prefix + node.name, node.lineno))  # source order
        score = 1 + branches(node.body, f"{prefix}{node.name}.")
        found[index] = FunctionComplexity(score, prefix + node.name, node.lineno)

    branches(tree.body, "")
    return tuple(found)
