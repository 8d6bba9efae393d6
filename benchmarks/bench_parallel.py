"""par_map against its peers, as ratios measured in the same run.

    python benchmarks/bench_parallel.py               # every figure this interpreter can give
    python benchmarks/bench_parallel.py --json out.json

Figures (issue 3's targets in brackets):
- 20,000 no-op items: par_map on threads(2) vs ThreadPoolExecutor(2).map        [<= 0.5x time]
- 20,000 no-op items: par_map on processes(2) vs ProcessPoolExecutor(2).map(chunksize=256)
                                                                                  [<= 1.0x time]
- CPU-bound pure-Python items: threads(2) vs serial (speed-up; meaningful on 3.13t) [>= 1.8x]
  and ThreadPoolExecutor(2).map vs serial for reference
- the same with processes(2) vs serial (meaningful on a GIL build)                [>= 1.7x]
- uneven CPU-bound items, par_map's automatic chunks vs chunksize=1 and one chunk per worker

Pools are started before timing (both ours and the executors), so each figure is the steady
cost of a call. Each figure is the best of several repeats on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

from report import Row, best_time, report

import dualmode as dm


def noop(x: int) -> int:
    return x


def cpu_bound(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def measure(workers: int, cpu_items: int, cpu_size: int) -> list[tuple[str, float, float, str]]:
    rows: list[tuple[str, float, float, str]] = []
    noops = list(range(20_000))
    cpu = [cpu_size] * cpu_items
    uneven = [cpu_size * (8 if i % 10 == 0 else 1) for i in range(cpu_items)]

    threads = dm.use("threads", workers=workers)
    with threads, ThreadPoolExecutor(workers) as pool:
        dm.par_map(noop, range(8))  # start the pool's threads before timing
        rows.append(
            (
                f"20,000 no-ops: par_map threads({workers}) vs ThreadPoolExecutor({workers}).map",
                best_time(lambda: dm.par_map(noop, noops)),
                best_time(lambda: list(pool.map(noop, noops))),
                "time ratio; target <= 0.5",
            )
        )
        serial_cpu = best_time(lambda: dm.par_map(cpu_bound, cpu, backend="serial"), 3)
        rows.append(
            (
                f"CPU-bound: threads({workers}) vs serial",
                serial_cpu,
                best_time(lambda: dm.par_map(cpu_bound, cpu), 3),
                "speed-up; target >= 1.8 on free-threaded 3.13t",
            )
        )
        rows.append(
            (
                f"CPU-bound: ThreadPoolExecutor({workers}).map vs serial (reference)",
                serial_cpu,
                best_time(lambda: list(pool.map(cpu_bound, cpu)), 3),
                "speed-up",
            )
        )
        for label, chunksize in (
            ("automatic chunks", None),
            ("chunksize=1", 1),
            ("one chunk per worker", -(-len(uneven) // workers)),
        ):
            rows.append(
                (
                    f"uneven CPU-bound, threads({workers}): {label} vs serial",
                    best_time(lambda: dm.par_map(cpu_bound, uneven, backend="serial"), 2),
                    best_time(lambda c=chunksize: dm.par_map(cpu_bound, uneven, chunksize=c), 3),
                    "speed-up",
                )
            )

    processes = dm.use("processes", workers=workers)
    context = get_context("spawn")
    with processes, ProcessPoolExecutor(workers, mp_context=context) as pool:
        dm.broadcast(time.time)  # start the worker processes before timing
        list(pool.map(noop, range(workers * 4)))
        rows.append(
            (
                f"20,000 no-ops: par_map processes({workers}) vs "
                f"ProcessPoolExecutor({workers}).map(chunksize=256)",
                best_time(lambda: dm.par_map(noop, noops)),
                best_time(lambda: list(pool.map(noop, noops, chunksize=256))),
                "time ratio; target <= 1.0",
            )
        )
        rows.append(
            (
                f"CPU-bound: processes({workers}) vs serial",
                best_time(lambda: dm.par_map(cpu_bound, cpu, backend="serial"), 3),
                best_time(lambda: dm.par_map(cpu_bound, cpu), 3),
                "speed-up; target >= 1.7 on a GIL build",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu-items", type=int, default=200, help="CPU-bound items")
    parser.add_argument("--cpu-size", type=int, default=20_000, help="loop length per item")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = measure(args.workers, args.cpu_items, args.cpu_size)
    report([Row(*row) for row in rows], args.json)


if __name__ == "__main__":
    main()
