"""The query engine against functools.cache and against itself on 1 vs 2 threads.

    python benchmarks/bench_query.py [--json out.json]

Figures (issue 4's targets in brackets):
- cache hit of a one-argument query vs a functools.cache hit: serial [<= 4x], threads [<= 6x]
- 2 threads hammering cached keys vs 1 thread, same total hits (free-threaded 3.13t) [>= 1.7x],
  in steady state (each thread's first pass over the keys is not timed); each thread takes
  ``db.ident`` once, in the thread, as a hot loop would (see BoundQuery: that is its own)
- a 10,000-query DAG of small CPU-bound bodies, prefetched on threads(2) vs serial [>= 1.7x]
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
import types

from report import Row, best_of_pairs, report, timed

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


def hammer(
    owner: object,
    name: str,
    keys: range,
    rounds: int,
    start: threading.Barrier,
    times: list[float],
) -> None:
    """One thread's share of the hammering of ``owner.name``: a first pass over *keys* (each
    thread's first hits fill its own copy of the memos, which is not what is measured), then
    *rounds*."""
    call = getattr(owner, name)
    for k in keys:
        call(k)  # type: ignore[operator]
    start.wait()
    times.append(time.perf_counter())
    for _ in range(rounds):
        for k in keys:
            call(k)  # type: ignore[operator]
    times.append(time.perf_counter())


def hammering(owner: object, name: str, threads: int, keys: range, rounds: int) -> float:
    """Seconds for *threads* threads to make ``rounds * len(keys)`` hits of ``owner.name`` in
    all, from the first one's start to the last one's end (as the threads see them: the main
    thread may not run again until they are done). Everything a thread uses comes in as
    arguments: on 3.13t a closure cell is a lock that both threads would take."""
    start = threading.Barrier(threads)
    times: list[float] = []
    share = (owner, name, keys, rounds // threads, start, times)
    pool = [threading.Thread(target=hammer, args=share) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return max(times) - min(times)


def measure(n_hits: int, dag: int) -> list[Row]:
    rows: list[Row] = []
    this_module = sys.modules[__name__]
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
                *best_of_pairs(
                    timed(functools.partial(hits, db.ident, keys, rounds)),
                    timed(lambda: hits(cached_ident, keys, rounds)),
                    repeats=9,
                ),
                f"time ratio; target <= {target}",
            )
        )
    db = Graph(backend="threads")
    for k in keys:
        db.ident(k)
    rows.append(
        Row(
            "2 threads hammering cached keys vs 1 thread (same total hits)",
            *best_of_pairs(
                lambda: hammering(db, "ident", 1, keys, rounds),
                lambda: hammering(db, "ident", 2, keys, rounds),
                repeats=15,
            ),
            "throughput ratio; target >= 1.7 on free-threaded 3.13t",
        )
    )
    # The same with one bound query, taken in the main thread, called from both: each call
    # then goes through the calling thread's own (BoundQuery._elsewhere).
    shared = types.SimpleNamespace(ident=db.ident)
    rows.append(
        Row(
            "for comparison: one bound query shared by 2 threads vs 1",
            *best_of_pairs(
                lambda: hammering(shared, "ident", 1, keys, rounds),
                lambda: hammering(shared, "ident", 2, keys, rounds),
                repeats=15,
            ),
            "throughput ratio when threads share the bound query object",
        )
    )
    # For comparison, the same with functools.cache: one shared cache object, whose reference
    # count and lock both threads write on every hit.
    rows.append(
        Row(
            "for comparison: functools.cache hammered by 2 threads vs 1",
            *best_of_pairs(
                lambda: hammering(this_module, "cached_ident", 1, keys, rounds),
                lambda: hammering(this_module, "cached_ident", 2, keys, rounds),
                repeats=15,
            ),
            "throughput ratio of the usual alternative",
        )
    )

    def fresh_dag(backend: str) -> None:
        Graph(backend=backend, workers=2).node.prefetch(range(dag))

    rows.append(
        Row(
            f"{dag:,}-query DAG: threads(2) vs serial",
            *best_of_pairs(
                timed(lambda: fresh_dag("serial")), timed(lambda: fresh_dag("threads")), repeats=9
            ),
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
