"""Primitive costs as ratios against baselines measured in the same run.

    python benchmarks/bench_primitives.py            # table on stdout
    python benchmarks/bench_primitives.py --json out.json

Figures:
- serial ``with Lock()`` vs ``with threading.Lock()`` (target <= 1.1 on a GIL build);
- AtomicInt.fetch_add and ShardedDict set+get, uncontended (1 thread) and contended
  (N threads on one object), threads backend vs serial backend, as throughput ratios;
- contended ShardedDict vs one dict behind one threading.Lock (what sharding buys).

Each figure is the best of several repeats, to damp the noise of a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable

import dualmode as dm

REPEATS = 5


def best_time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """The fastest of *repeats* runs of *fn*, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def lock_loop(lock: object, n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            with lock:  # type: ignore[attr-defined]
                pass

    return run


def in_threads(threads: int, work: Callable[[int], None]) -> Callable[[], None]:
    """Run work(thread_index) on *threads* threads released together; wall time is measured."""

    def run() -> None:
        start = threading.Barrier(threads)

        def body(index: int) -> None:
            start.wait()
            work(index)

        pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    return run


def atomic_work(atomic: dm.AtomicInt, n: int) -> Callable[[int], None]:
    def work(index: int) -> None:
        add = atomic.fetch_add
        for _ in range(n):
            add(1)

    return work


def dict_work(d: dm.ShardedDict | LockedDict, n: int) -> Callable[[int], None]:
    def work(index: int) -> None:
        base = index * n
        put, get = d.set, d.get
        for k in range(base, base + n):
            put(k, k)
            get(k)

    return work


class LockedDict:
    """The obvious alternative to sharding: one dict behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dict: dict[int, int] = {}

    def set(self, key: int, value: int) -> None:
        with self._lock:
            self._dict[key] = value

    def get(self, key: int) -> int | None:
        with self._lock:
            return self._dict.get(key)


def measure(n: int, threads: int) -> list[tuple[str, float, float, str]]:
    """Rows of (figure, candidate seconds, baseline seconds, note)."""
    rows = []
    serial = dm.use("serial")
    with serial:
        serial_lock = dm.Lock()
    rows.append(
        (
            "serial `with Lock()` vs `with threading.Lock()`",
            best_time(lock_loop(serial_lock, n)),
            best_time(lock_loop(threading.Lock(), n)),
            "time ratio; target <= 1.1 on a GIL build",
        )
    )

    per_thread = n // threads
    for label, make, work in (
        ("AtomicInt.fetch_add", dm.AtomicInt, atomic_work),
        ("ShardedDict.set+get", dm.ShardedDict, dict_work),
    ):
        serial_obj = make(backend="serial")  # type: ignore[operator]
        threads_obj = make(backend="threads")  # type: ignore[operator]
        serial_time = best_time(in_threads(1, work(serial_obj, n)))
        rows.append(
            (
                f"{label}, uncontended: threads vs serial",
                best_time(in_threads(1, work(threads_obj, n))),
                serial_time,
                "1 thread, same op count; time ratio",
            )
        )
        threads_obj = make(backend="threads")  # type: ignore[operator]
        rows.append(
            (
                f"{label}, contended: {threads} threads (threads) vs 1 thread (serial)",
                best_time(in_threads(threads, work(threads_obj, per_thread))),
                serial_time,
                "same total op count; time ratio (< 1 means parallel speed-up)",
            )
        )
    rows.append(
        (
            f"ShardedDict vs dict+one Lock, contended, {threads} threads",
            best_time(in_threads(threads, dict_work(dm.ShardedDict(backend="threads"), per_thread))),
            best_time(in_threads(threads, dict_work(LockedDict(), per_thread))),
            "time ratio",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="operations per figure")
    parser.add_argument("--threads", type=int, default=2, help="threads for contended figures")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    header = f"Python {sys.version.split()[0]}, GIL {'on' if gil else 'off'}, n={args.n}"
    rows = measure(args.n, args.threads)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(header)
        for figure, cand, base, note in rows:
            print(f"{cand / base:6.2f}x  {figure}  ({cand:.4f}s / {base:.4f}s; {note})")
    else:
        table = Table(title=header)
        for column in ("figure", "ratio", "candidate s", "baseline s", "note"):
            table.add_column(column)
        for figure, cand, base, note in rows:
            table.add_row(figure, f"{cand / base:.2f}x", f"{cand:.4f}", f"{base:.4f}", note)
        Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "gil": gil,
                    "rows": [
                        {"figure": f, "candidate_s": c, "baseline_s": b, "ratio": c / b}
                        for f, c, b, _ in rows
                    ],
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
