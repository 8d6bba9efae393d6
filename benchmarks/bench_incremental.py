"""Incremental re-validation against recomputing from scratch (issue 5).

    python benchmarks/bench_incremental.py [--backend processes] [--json out.json]

The graph: 10,000 ``item`` queries, each a small CPU-bound body over one of 100 inputs (so each
input is read by 100 items), 100 ``group`` queries of 100 items each, and one ``total`` over
the groups: 10,101 queries. One input changes; ``total()`` is asked again, which re-validates
the graph and re-executes the 100 items that read the input, then what depends on them.

Two layouts: the 100 items of an input in one group ("clustered": one group is affected), or
spread over every group ("spread": every group must be re-validated, and 9,900 of the items
it reads are checked and found green). The body costs about as much as 400 loop iterations
(~20 us on 3.11). Figures, on serial, threads(2) and processes(2) by default:
- each layout's re-validation time / the backend's own from-scratch time [target <= 5%]
- each parallel backend's from-scratch time (a plain ``db.total()``, computed in the calling
  thread) / serial's [target <= 1.25 on processes: at least 0.8x serial's speed]
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Iterator

from report import Row, best_time, report

import dualmode as dm

ITEMS = 10_000
FANOUT = 100  # items per input, and items per group
WORK = 400  # loop iterations in each item body
WORKERS = 2  # of threads and processes (total() runs in the calling thread on every backend)


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
    db = Project(spread, backend=backend, workers=WORKERS)
    for n in range(ITEMS // FANOUT):
        db.source[n] = n
    return db


def from_scratch(spread: bool, backend: str) -> int:
    return fresh(spread, backend).total()


def label(backend: str) -> str:
    return backend if backend == "serial" else f"{backend}({WORKERS})"


def measure(backend: str) -> tuple[list[Row], float]:
    """*backend*'s re-validation rows, and its from-scratch time: the best of both layouts',
    which execute the same 10,101 bodies."""
    rows = []
    fresh(False, backend)  # starts the backend (the processes coordinator), untimed
    scratches = []
    for spread in (False, True):
        layout = "spread" if spread else "clustered"
        scratch = best_time(functools.partial(from_scratch, spread, backend), 3)
        scratches.append(scratch)
        db = fresh(spread, backend)
        db.total()

        def revalidate(db: Project = db, changes: Iterator[int] = _CHANGES) -> None:
            db.source[5] = next(changes)  # a new value: its 100 readers re-execute
            db.total()

        again = best_time(revalidate, 5)
        stats = db.stats().revisions[db.revision]
        rows.append(
            Row(
                f"{label(backend)}, {layout}: change 1 of 100 inputs, re-validate 10,101 "
                f"queries ({stats.executed} executed, {stats.green} green) vs from scratch",
                again,
                scratch,
                "time ratio; target <= 0.05",
            )
        )
    return rows, min(scratches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", help="default: serial, threads and processes")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    backends = args.backend or ["serial", "threads", "processes"]
    measured = {b: measure(b) for b in backends}
    rows = [row for b in backends for row in measured[b][0]]
    if "serial" in measured:  # each other backend's plain calls against serial's
        serial = measured["serial"][1]
        rows += [
            Row(
                f"{label(b)}, from scratch: plain db.total() vs serial",
                scratch,
                serial,
                "time ratio; target <= 1.25 (>= 0.8x serial speed)",
            )
            for b, (_, scratch) in measured.items()
            if b != "serial"
        ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
