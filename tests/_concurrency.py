"""Helpers the tests share for running code on several threads (or processes) at once.

A plain module, imported by name (pytest puts ``tests/`` on ``sys.path``), rather than
``conftest.py``: a conftest is for fixtures and hooks, and importing one by name breaks once
the repository has a second ``conftest.py`` (pytest imports each as ``conftest``). The fixtures
built on these helpers are in ``tests/conftest.py``.

Every wait here has a timeout, so a deadlock fails its test instead of hanging it.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a test waits for a thread it started (or a condition) before failing: generous,
#: the CI machines are small and shared.
JOIN_TIMEOUT = 30.0


class RaceWindow:
    """Random moments for two racing events (a thread's release and a task's cancellation),
    and a tally of how the trials came out. The window is *width* seconds, and doubles (up
    to 32 times) after each 100 trials in which one outcome has not yet shown up: on a loaded
    machine a round trip to the coordinator can outlast a 2 ms window every time, and a race
    never run is not tested."""

    def __init__(self, seed: int, *outcomes: str, width: float = 0.002) -> None:
        self._rng = random.Random(seed)
        self._width = width
        self._widest = 32 * width
        self.outcomes = dict.fromkeys(outcomes, 0)
        self._trials_missing_one = 0

    def delay(self) -> float:
        """A moment in the window, in seconds from now."""
        return self._rng.random() * self._width

    def record(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if 0 in self.outcomes.values():
            self._trials_missing_one += 1
            if self._trials_missing_one % 100 == 0:
                self._width = min(2 * self._width, self._widest)

    def assert_both_sides_hit(self) -> None:
        assert all(self.outcomes.values()), f"a side of the race never won: {self.outcomes}"


def run_threads(n: int, target: Callable[[int], T]) -> list[T]:
    """Run ``target(i)`` for i in range(n) on n threads released together (on a
    ``threading.Barrier``, so they race from the first operation); return their results in
    order, or re-raise the first failure."""
    start = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            start.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    assert not any(worker.is_alive() for worker in workers), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread: its result, or its exception raised here."""
    return run_threads(1, lambda _: fn(*args))[0]


def start_thread(fn: Callable[[], object]) -> threading.Thread:
    """Start ``fn()`` on a daemon thread (join it with JOIN_TIMEOUT)."""
    worker = threading.Thread(target=fn, daemon=True)
    worker.start()
    return worker


def wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> None:
    """Poll *predicate* every millisecond until it is true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


# The innermost Python function of a thread asleep in a blocking wait: dualmode's parking lot,
# threading's Condition and Event waits, a lock's acquire.
_BLOCKING = frozenset({"park_thread", "wait", "acquire"})
# ...and on processes, a call waiting for the coordinator's reply (multiprocessing's _recv).
_AWAITING_REPLY = "_recv"


def _current_frames() -> dict[int, Any]:
    """``sys._current_frames()`` with the garbage collector off while it runs: on CPython
    before 3.12 a collection inside it (it holds the runtime's thread list lock) can run a
    finalizer that waits on a thread which waits for that lock, and the test hangs
    (CPython gh-106883; later releases do the same)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def wait_until_blocked(thread: threading.Thread, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until *thread* sleeps in a blocking wait (its innermost frame is one of
    ``_BLOCKING``), so that a test then exercises the wake-up path, not a race that a sleep
    usually wins."""

    def blocked() -> bool:
        frame = _current_frames().get(thread.ident or 0)
        return frame is not None and frame.f_code.co_name in _BLOCKING

    wait_until(blocked, timeout)


def threads_in(filename: str) -> tuple[int, int]:
    """``(running, blocked)``: how many threads run code of *filename* (their stack passes
    through it), and how many of those sleep in a blocking wait (of threading, dualmode, or a
    processes primitive's request)."""
    running = blocked = 0
    for frame in _current_frames().values():
        innermost, outer = frame, frame
        while outer is not None and outer.f_code.co_filename != filename:
            outer = outer.f_back
        if outer is not None:
            running += 1
            blocked += innermost.f_code.co_name in _BLOCKING | {_AWAITING_REPLY}
    return running, blocked


def gone(pid: int) -> bool:
    """True once process *pid* has exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def read_while_changing(
    read: Callable[[Any], T],
    keys: list[Any],
    change: Callable[[int], None],
    versions: int,
    is_stale: Callable[[Any, int, T], bool],
    *,
    readers: int = 2,
    retry: tuple[type[BaseException], ...] = (),
) -> list[tuple[Any, int, T]]:
    """*readers* threads call ``read(key)`` for every key, over and over, while this thread
    calls ``change(v)`` for v = 1 .. versions - 1 (a 2 ms pause after each). A read that
    starts after ``change(v)`` returned has floor v (0 before the first): returns each
    ``(key, floor, value)`` for which ``is_stale(key, floor, value)``. A read that raises one
    of *retry* is made again."""
    version = [0]
    stop = threading.Event()
    stale: list[tuple[Any, int, T]] = []

    def hammer() -> None:
        while not stop.is_set():
            for key in keys:
                floor = version[0]
                try:
                    value = read(key)
                except retry:
                    continue
                if is_stale(key, floor, value):
                    stale.append((key, floor, value))

    threads = [threading.Thread(target=hammer) for _ in range(readers)]
    for t in threads:
        t.start()
    try:
        for v in range(1, versions):
            change(v)
            version[0] = v
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a reader thread hung"
    return stale


#: What ``nox -s stress`` sets to push the stress tests harder (see noxfile.py): threads per
#: round, a multiplier of the rounds, and the GIL build's thread switch interval in seconds.
STRESS_THREADS = "DUALMODE_STRESS_THREADS"
STRESS_ROUNDS = "DUALMODE_STRESS_ROUNDS"
SWITCH_INTERVAL = "DUALMODE_SWITCH_INTERVAL"


def _positive(variable: str, default: float) -> float:
    value = float(os.environ.get(variable) or default)
    if value <= 0:
        raise ValueError(f"{variable}={value!r}: give a number above 0, or unset it")
    return value


def switch_interval() -> float:
    """The thread switch interval stress tests run under on a GIL build: 10 us (CPython's
    default is 5 ms, which lets a thread run through most races alone), or
    ``$DUALMODE_SWITCH_INTERVAL``."""
    return _positive(SWITCH_INTERVAL, 1e-5)


def stress_timeout(seconds: float) -> float:
    """A stress test's timeout, *seconds* at the default sizing, scaled with the threads and
    rounds the environment asks for (``nox -s stress``)."""
    return seconds * _positive(STRESS_ROUNDS, 1) * max(1.0, _positive(STRESS_THREADS, 4) / 4)


@dataclass(frozen=True)
class Stress:
    """How hard a stress test pushes the parallel backend it runs on (the ``stress`` fixture).

    A stress test repeats a round (fresh primitives, :attr:`threads` threads released
    together) many times, each thread making many operations. On threads an operation costs
    well under a microsecond; on processes every one is a round trip to the coordinator, about
    50 us (and each round's new threads open connections of their own). So on processes a
    test makes :attr:`op_share` of its operations in :attr:`round_share` of its rounds: still
    tens to hundreds of racing operations per thread per round, which is where races show (the
    scheduling that exposes them happens at every round trip), in about the time the threads
    run takes. ``ops(n)`` and ``rounds(n)`` never go below 1 (or a test's own minimum).
    ``nox -s stress`` raises :attr:`threads` (``$DUALMODE_STRESS_THREADS``, 4 by default) and
    multiplies the rounds (``$DUALMODE_STRESS_ROUNDS``, 1 by default).
    """

    backend: str
    op_share: float = 1.0
    round_share: float = 1.0
    threads: int = 4

    @classmethod
    def on(cls, backend: str) -> Stress:
        """The sizing for *backend*: full on threads, scaled down on processes; threads and
        rounds as the environment asks."""
        threads = int(_positive(STRESS_THREADS, 4))
        rounds = _positive(STRESS_ROUNDS, 1)
        if backend == "processes":
            return cls(backend, op_share=0.25, round_share=0.5 * rounds, threads=threads)
        return cls(backend, round_share=rounds, threads=threads)

    def ops(self, n: int, *, at_least: int = 1, multiple_of: int = 1) -> int:
        """How many operations a test that makes *n* on threads makes here."""
        scaled = max(at_least, round(n * self.op_share))
        return -(-scaled // multiple_of) * multiple_of  # rounded up to a multiple

    def rounds(self, n: int) -> int:
        """How many rounds a test that runs *n* on threads runs here."""
        return max(1, round(n * self.round_share))

    def repeat(self, n: int, one_round: Callable[[], None]) -> None:
        """Run ``one_round()`` ``rounds(n)`` times."""
        for _ in range(self.rounds(n)):
            one_round()
