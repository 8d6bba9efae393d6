"""What every benchmark here shares: best-of-N timing and the table/JSON report of ratios."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Row(NamedTuple):
    """One figure: ``a / b`` is the ratio reported; *meaning* says which way is good."""

    figure: str
    a: float
    b: float
    meaning: str


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of *repeats* runs of *fn*, in seconds: the least noisy estimate on a
    shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """*fn* as a callable that returns how many seconds it took."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def best_of_turns(fns: Sequence[Callable[[], float]], repeats: int = 5) -> tuple[float, ...]:
    """The best of *repeats* runs of each of *fns*, run in turn (a, b, c, a, b, c...) so that a
    noisy spell of a shared machine falls on every side of a ratio. Each returns the seconds it
    measured (see :func:`timed`)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn())
    return tuple(best)


def best_of_pairs(
    a: Callable[[], float], b: Callable[[], float], repeats: int = 5
) -> tuple[float, float]:
    """:func:`best_of_turns` of *a* and *b*: their best times, in that order."""
    best_a, best_b = best_of_turns((a, b), repeats)
    return best_a, best_b


def report(rows: Sequence[Row], json_path: str | None, note: str = "") -> None:
    """Print the rows as a rich table headed by the interpreter; optionally write JSON."""
    from rich.console import Console
    from rich.table import Table

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    header = f"Python {sys.version.split()[0]}, GIL {'on' if gil else 'off'}{note}"
    table = Table(title=header)
    for column in ("figure", "ratio a/b", "a (s)", "b (s)", "meaning"):
        table.add_column(column)
    for row in rows:
        ratio = row.a / row.b
        # Three decimals below 0.1: a ratio against a target of 0.05 must not round onto it.
        shown = f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}"
        table.add_row(row.figure, shown, f"{row.a:.4f}", f"{row.b:.4f}", row.meaning)
    Console(width=160).print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "gil": gil,
                    "rows": [{**row._asdict(), "ratio": row.a / row.b} for row in rows],
                },
                f,
                indent=2,
            )
