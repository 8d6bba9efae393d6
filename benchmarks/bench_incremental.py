"""Incremental re-validation against recomputing from scratch (issue 5).

    python benchmarks/bench_incremental.py [--backend serial] [--json out.json]

The graph: 10,000 ``item`` queries, each a small CPU-bound body over one of 100 inputs (so each
input is read by 100 items), 100 ``group`` queries of 100 items each, and one ``total`` over
the groups: 10,101 queries. One input changes; ``total()`` is asked again, which re-validates
the graph and re-executes the 100 items that read the input, then what depends on them.

Two layouts: the 100 items of an input in one group ("clustered": one group is affected), or
spread over every group ("spread": every group must be re-validated, and 9,900 of the items
it reads are checked and found green). The figure is re-validation time / from-scratch time
[target <= 5%]; the body costs about as much as 400 loop iterations (~20 us on 3.11).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

from report import Row, best_time, report

import dualmode as dm

ITEMS = 10_000
FANOUT = 100  # items per input, and items per group
WORK = 400  # loop iterations in each item body


def work(seed: int) -> int:
    total = seed
    for k in range(WORK):
        total = (total * 31 + k) % 1_000_003
    return total


class Project(dm.Database):
    source = dm.input()

    def __init__(self, spread: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.spread = spread

    def input_of(self, i: int) -> int:
        return i % FANOUT if self.spread else i // FANOUT

    @dm.query
    def item(self, i: int) -> int:
        return work(self.source[self.input_of(i)] + i)

    @dm.query
    def group(self, g: int) -> int:
        return sum(self.item(i) for i in range(g * FANOUT, (g + 1) * FANOUT)) % 1_000_003

    @dm.query
    def total(self) -> int:
        return sum(self.group(g) for g in range(ITEMS // FANOUT)) % 1_000_003


_CHANGES = itertools.count(1000)  # every change sets a value never set before


def fresh(spread: bool, backend: str) -> Project:
    db = Project(spread, backend=backend)
    for n in range(ITEMS // FANOUT):
        db.source[n] = n
    return db


def measure(backend: str) -> list[Row]:
    rows = []
    for spread in (False, True):
        layout = "spread" if spread else "clustered"
        scratch = best_time(lambda spread=spread: fresh(spread, backend).total(), 3)
        db = fresh(spread, backend)
        db.total()

        def revalidate(db: Project = db, changes: Iterator[int] = _CHANGES) -> None:
            db.source[5] = next(changes)  # a new value: its 100 readers re-execute
            db.total()

        again = best_time(revalidate, 5)
        stats = db.stats().revisions[db.revision]
        rows.append(
            Row(
                f"{backend}, {layout}: change 1 of 100 inputs, re-validate 10,101 queries "
                f"({stats.executed} executed, {stats.green} green) vs from scratch",
                again,
                scratch,
                "time ratio; target <= 0.05",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", help="default: serial and threads")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = [row for b in args.backend or ["serial", "threads"] for row in measure(b)]
    report(rows, args.json)


if __name__ == "__main__":
    main()
