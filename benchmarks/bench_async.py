"""The async twins' costs, as ratios against baselines measured in the same run.

    python benchmarks/bench_async.py            # table on stdout
    python benchmarks/bench_async.py --json out.json

Figures (issue 13's targets):
- uncontended ``async with dm.Lock()`` on threads vs ``async with asyncio.Lock()``
  (target <= 2.0), and the same under trio vs ``trio.Lock``;
- what the hybrid lock costs sync code: threads ``with dm.Lock()`` vs ``with threading.Lock()``;
- a thread producing and a task consuming *n* items, and a task producing and a thread
  consuming, through ``dm.Queue`` (threads) vs janus (target: >= 2x janus's throughput, so a
  time ratio <= 0.5), and vs aiologic.SimpleQueue for reference (janus and aiologic come with
  the ``bench`` extra; a row is left out where one is missing).

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


class _Ends:
    """One queue's two ends as the hand-off loops below use them, for each library."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def make(self) -> Any:  # called inside the running loop (janus needs one)
        if self.kind == "dualmode":
            return dm.Queue(backend="threads")
        if self.kind == "janus":
            import janus

            return janus.Queue()
        import aiologic

        return aiologic.SimpleQueue()

    def sync_put(self, q: Any) -> Callable[[Any], None]:
        return q.sync_q.put if self.kind == "janus" else q.put

    def sync_get(self, q: Any) -> Callable[[], Any]:
        if self.kind == "janus":
            return q.sync_q.get  # type: ignore[no-any-return]
        return q.green_get if self.kind == "aiologic" else q.get  # type: ignore[no-any-return]

    def async_put(self, q: Any) -> Callable[[Any], Any]:
        return q.async_q.put if self.kind == "janus" else q.async_put

    def async_get(self, q: Any) -> Callable[[], Any]:
        return q.async_q.get if self.kind == "janus" else q.async_get


def hand_off(ends: _Ends, n: int, thread_to_task: bool) -> Callable[[], None]:
    """*n* items from a thread to a task (or from a task to a thread) under asyncio."""

    async def loop() -> None:
        q = ends.make()
        if thread_to_task:
            put = ends.sync_put(q)
            worker = threading.Thread(target=lambda: [put(i) for i in range(n)])
            worker.start()
            get = ends.async_get(q)
            for _ in range(n):
                await get()
        else:
            get_sync = ends.sync_get(q)
            worker = threading.Thread(target=lambda: [get_sync() for _ in range(n)])
            worker.start()
            put_async = ends.async_put(q)
            for i in range(n):
                await put_async(i)
        await asyncio.get_running_loop().run_in_executor(None, worker.join)
        if ends.kind == "janus":
            q.close()
            await q.wait_closed()

    return lambda: asyncio.run(loop())


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def queue_rows(n: int) -> list[Row]:
    rows = []
    for thread_to_task, direction in ((True, "thread -> task"), (False, "task -> thread")):
        ours = _Ends("dualmode")
        for peer, meaning in (
            ("janus", "time ratio; target <= 0.5 (>= 2x janus's throughput)"),
            ("aiologic", "time ratio, for reference"),
        ):
            if not _installed(peer):
                continue
            a, b = best_of_pairs(
                timed(hand_off(ours, n, thread_to_task)),
                timed(hand_off(_Ends(peer), n, thread_to_task)),
                repeats=3,
            )
            rows.append(Row(f"{n:,} items {direction}: dm.Queue vs {peer}", a, b, meaning))
    return rows


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
    return rows + queue_rows(n // 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="operations per figure")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report(measure(args.n), args.json, f", n={args.n}")


if __name__ == "__main__":
    main()
