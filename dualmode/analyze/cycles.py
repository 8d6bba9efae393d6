"""Import cycles: the strongly connected components of the import graph (Tarjan's
algorithm, iterative, so deep graphs do not hit the recursion limit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["strongly_connected"]


def strongly_connected(graph: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """The components of *graph* with more than one node, each sorted, largest first (then
    by name): the same answer for the same graph, whatever the order of its dicts."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[tuple[str, ...]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(tuple(sorted(component)))
    return tuple(sorted(found, key=lambda c: (-len(c), c)))
