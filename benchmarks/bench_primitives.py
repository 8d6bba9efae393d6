"""Primitive costs as ratios against baselines measured in the same run.

    python benchmarks/bench_primitives.py            # table on stdout
    python benchmarks/bench_primitives.py --json out.json

Figures:
- serial ``with Lock()`` vs ``with threading.Lock()`` (target <= 1.1 on a GIL build);
- AtomicInt.fetch_add and ShardedDict set+get, uncontended (1 thread) and contended
  (N threads on one object), threads backend vs serial backend, as throughput ratios;
- contended ShardedDict vs one dict behind one threading.Lock (what sharding buys);
- threads ``with Lock()`` vs ``with threading.Lock()``, uncontended (1 thread) and contended
  (N threads on one lock), with the deadlock watchdog off and on (``watchdog=``): what owner
  tracking and wait records cost.

Each figure is the best of several repeats, to damp the noise of a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable

from report import Row, best_time, report

import dualmode as dm


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
        # Serial primitives belong to their creating thread: run uncontended work right here.
        serial_time = best_time(functools.partial(work(serial_obj, n), 0))
        rows.append(
            (
                f"{label}, uncontended: threads vs serial",
                best_time(functools.partial(work(threads_obj, n), 0)),
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
            best_time(
                in_threads(threads, dict_work(dm.ShardedDict(backend="threads"), per_thread))
            ),
            best_time(in_threads(threads, dict_work(LockedDict(), per_thread))),
            "time ratio",
        )
    )
    rows.extend(lock_rows(n, threads))
    return rows


def lock_work(lock: object, n: int) -> Callable[[int], None]:
    def work(_index: int) -> None:
        lock_loop(lock, n)()

    return work


def lock_rows(n: int, threads: int) -> list[tuple[str, float, float, str]]:
    """threads-backend Lock against threading.Lock, with the watchdog off and on."""
    rows = []
    per_thread = n // threads
    plain = best_time(lock_loop(threading.Lock(), n))
    plain_contended = best_time(in_threads(threads, lock_work(threading.Lock(), per_thread)))
    for watchdog in (None, 10.0):
        with dm.use("threads", watchdog=watchdog) as backend:
            lock, contended = dm.Lock(), dm.Lock()
        state = "on" if watchdog else "off"
        rows.append(
            (
                f"threads `with Lock()` vs `with threading.Lock()`, uncontended, watchdog {state}",
                best_time(lock_loop(lock, n)),
                plain,
                "1 thread; time ratio",
            )
        )
        rows.append(
            (
                f"threads Lock vs threading.Lock, contended: {threads} threads, watchdog {state}",
                best_time(in_threads(threads, lock_work(contended, per_thread))),
                plain_contended,
                "same total op count; time ratio",
            )
        )
        if watchdog:
            backend.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="operations per figure")
    parser.add_argument("--threads", type=int, default=2, help="threads for contended figures")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    report([Row(*row) for row in measure(args.n, args.threads)], args.json, f", n={args.n}")


if __name__ == "__main__":
    main()
