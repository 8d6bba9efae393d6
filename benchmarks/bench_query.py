"""The query engine against functools.cache and against itself on 1 vs 2 threads.

    python benchmarks/bench_query.py [--json out.json]

Figures (issue 4's targets in brackets):
- cache hit of a one-argument query vs a functools.cache hit: serial [<= 4x], threads [<= 6x]
- 2 threads hammering cached keys vs 1 thread, same total hits (free-threaded 3.13t) [>= 1.7x]
- a 10,000-query DAG of small CPU-bound bodies, prefetched on threads(2) vs serial [>= 1.7x]
"""

from __future__ import annotations

import argparse
import functools
import threading

from report import Row, best_time, report

import dualmode as dm


class Graph(dm.Database):
    @dm.query
    def ident(self, x: int) -> int:
        return x

    @dm.query
    def node(self, i: int) -> int:
        # Small CPU-bound body over two earlier nodes: a DAG with shared dependencies.
        deps = [self.node(j) for j in (i // 2, i // 3) if j < i]
        total = sum(deps)
        for k in range(300):
            total = (total * 31 + k) % 1_000_003
        return total


@functools.cache
def cached_ident(x: int) -> int:
    return x


def hits(fn: object, keys: range, rounds: int) -> None:
    call = fn
    for _ in range(rounds):
        for k in keys:
            call(k)  # type: ignore[operator]


def in_threads(threads: int, work: functools.partial[None]) -> None:
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def measure(n_hits: int, dag: int) -> list[Row]:
    rows: list[Row] = []
    keys = range(1000)
    rounds = n_hits // len(keys)
    for name, target in (("serial", 4), ("threads", 6)):
        db = Graph(backend=name)
        for k in keys:
            db.ident(k)
            cached_ident(k)
        rows.append(
            Row(
                f"cache hit, one-argument query on {name} vs functools.cache hit",
                best_time(lambda db=db: hits(db.ident, keys, rounds)),
                best_time(lambda: hits(cached_ident, keys, rounds)),
                f"time ratio; target <= {target}",
            )
        )
    db = Graph(backend="threads")
    for k in keys:
        db.ident(k)
    one = best_time(lambda: in_threads(1, functools.partial(hits, db.ident, keys, rounds)))
    two = best_time(lambda: in_threads(2, functools.partial(hits, db.ident, keys, rounds // 2)))
    rows.append(
        Row(
            "2 threads hammering cached keys vs 1 thread (same total hits)",
            one,
            two,
            "throughput ratio; target >= 1.7 on free-threaded 3.13t",
        )
    )
    # The ceiling this build allows: the same hits served by a plain dict holding the same
    # values (shared between the threads, so every hit increfs an object both threads touch).
    plain = {k: db.ident(k) for k in keys}
    one = best_time(lambda: in_threads(1, functools.partial(hits, plain.__getitem__, keys, rounds)))
    two = best_time(
        lambda: in_threads(2, functools.partial(hits, plain.__getitem__, keys, rounds // 2))
    )
    rows.append(
        Row(
            "ceiling: 2 threads vs 1 hitting a plain dict of the same values",
            one,
            two,
            "throughput ratio of CPython itself, for comparison",
        )
    )

    def fresh_dag(backend: str) -> None:
        Graph(backend=backend, workers=2).node.prefetch(range(dag))

    rows.append(
        Row(
            f"{dag:,}-query DAG: threads(2) vs serial",
            best_time(lambda: fresh_dag("serial"), 3),
            best_time(lambda: fresh_dag("threads"), 3),
            "speed-up; target >= 1.7 on free-threaded 3.13t",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--dag", type=int, default=10_000)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report(measure(args.hits, args.dag), args.json)


if __name__ == "__main__":
    main()
