"""The async twins' costs, as ratios against baselines measured in the same run.

    python benchmarks/bench_async.py            # table on stdout
    python benchmarks/bench_async.py --json out.json

Figures (issue 13's targets):
- uncontended ``async with dm.Lock()`` on threads vs ``async with asyncio.Lock()``
  (target <= 2.0), and the same under trio vs ``trio.Lock``;
- what the hybrid lock costs sync code: threads ``with dm.Lock()`` vs ``with threading.Lock()``.

Each figure is the best of several repeats, taken in turns, to damp the noise of a shared
2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Callable
from typing import Any

from report import Row, best_of_pairs, report, timed

import dualmode as dm


def async_lock_loop(make: Callable[[], Any], n: int, library: str) -> Callable[[], None]:
    """``async with lock`` *n* times in one task, under *library* (asyncio, trio); the lock is
    made inside the loop, as asyncio's and trio's must be."""

    async def loop() -> None:
        lock = make()
        for _ in range(n):
            async with lock:
                pass

    def run() -> None:
        if library == "asyncio":
            asyncio.run(loop())
        else:
            import trio

            trio.run(loop)

    return run


def lock_loop(lock: Any, n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            with lock:
                pass

    return run


def measure(n: int) -> list[Row]:
    rows = []
    threads = dm.Lock(backend="threads")
    ours, theirs = best_of_pairs(
        timed(async_lock_loop(lambda: threads, n, "asyncio")),
        timed(async_lock_loop(asyncio.Lock, n, "asyncio")),
    )
    rows.append(
        Row(
            "uncontended `async with dm.Lock()` (threads) vs asyncio.Lock, asyncio",
            ours,
            theirs,
            "time ratio; target <= 2.0",
        )
    )
    try:
        import trio
    except ImportError:
        pass
    else:
        ours, theirs = best_of_pairs(
            timed(async_lock_loop(lambda: threads, n, "trio")),
            timed(async_lock_loop(trio.Lock, n, "trio")),
        )
        rows.append(
            Row(
                "uncontended `async with dm.Lock()` (threads) vs trio.Lock, trio",
                ours,
                theirs,
                "time ratio",
            )
        )
    ours, theirs = best_of_pairs(
        timed(lock_loop(threads, n)), timed(lock_loop(threading.Lock(), n))
    )
    rows.append(
        Row(
            "uncontended `with dm.Lock()` (threads) vs threading.Lock",
            ours,
            theirs,
            "time ratio: what the hybrid FIFO lock costs sync code",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="operations per figure")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report(measure(args.n), args.json, f", n={args.n}")


if __name__ == "__main__":
    main()
