"""Process targets for test_processes_backend.py (and functions broadcast to worker processes).

``spawn`` pickles a target by reference, so targets must live in a module that the children
can import: this one (its directory is on the parent's ``sys.path``, which spawned children
inherit). Results go back to the test through a dualmode Queue passed as ``out``.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from typing import Any

import dualmode as dm


def add_many(counter: dm.AtomicInt, n: int) -> None:
    for _ in range(n):
        counter.fetch_add(1)


def mutex_add(mutex: dm.Mutex, n: int) -> None:
    for _ in range(n):
        with mutex.lock() as guard:
            guard.value = guard.value + 1


def set_event(event: dm.Event) -> None:
    event.set()


def lock_probe(lock: dm.Lock, out: dm.Queue) -> None:
    out.put(lock.acquire(blocking=False))  # the parent holds it
    out.put(lock.acquire(timeout=60))  # waits for the parent to release
    out.put(lock.locked())
    lock.release()


def rlock_hold(rlock: dm.RLock, out: dm.Queue, go: dm.Event) -> None:
    rlock.acquire()
    rlock.acquire()  # reentrant
    out.put("held")
    go.wait(60)
    rlock.release()
    rlock.release()
    try:
        rlock.release()
    except RuntimeError:
        out.put("RuntimeError")


def semaphores(sem: dm.Semaphore, bounded: dm.BoundedSemaphore, out: dm.Queue) -> None:
    out.put([sem.acquire(), sem.acquire(), sem.acquire(blocking=False)])
    sem.release(2)
    try:
        bounded.release()
    except ValueError:
        out.put("ValueError")


def notify(cond: dm.Condition, flag: dm.AtomicInt) -> None:
    with cond:
        flag.store(1)
        cond.notify_all()


def barrier_wait(barrier: dm.Barrier, out: dm.Queue) -> None:
    out.put(barrier.wait(timeout=60))


def read_hold(rw: dm.RwLock, out: dm.Queue, go: dm.Event) -> None:
    rw.acquire_read()
    out.put("reading")
    go.wait(60)
    rw.release_read()


def _init_once(runs: dm.AtomicInt) -> str:
    runs.fetch_add(1)
    time.sleep(0.2)  # widen the window in which the others must wait, not run fn again
    return "initialised"


def once_race(cell: dm.OnceCell, runs: dm.AtomicInt, start: dm.Barrier, out: dm.Queue) -> None:
    start.wait(timeout=60)
    out.put(get_once(cell, runs))


def get_once(cell: dm.OnceCell, runs: dm.AtomicInt) -> Any:
    return cell.get_or_init(functools.partial(_init_once, runs))


def fill(d: dm.ShardedDict, n: int) -> None:
    for i in range(n):
        d[i] = i * i
    d.setdefault("winner", os.getpid())


def increment_frozen(fl: dm.FreezeLock) -> None:
    with fl.write() as guard:
        guard.value = guard.value + 1


def read_frozen(fl: dm.FreezeLock, out: dm.Queue) -> None:
    out.put(fl.read())
    out.put(fl.read())  # served from this process's cached copy
    out.put(fl.frozen)
    try:
        fl.write()
    except dm.BorrowError:
        out.put("BorrowError")


def produce(q: dm.Queue, n: int) -> None:
    for i in range(n):
        q.put(i)
    q.shutdown()


def use_worker_local(wl: dm.WorkerLocal) -> None:
    value = wl.get()
    value["n"] = 5  # after the first publish: the copy published at exit must carry it


def create_via_handle(primitive: Any, out: dm.Queue) -> None:
    backend = primitive.backend
    out.put((type(backend).__name__, backend.coordinator_pid))
    out.put(backend.create_atomic_int(7))  # outlives this process: the queue holds a copy


class DiesUnderTwoCallers(dm.Database):
    """``waits(k)`` needs ``die(0)``, which kills the worker process that executes it."""

    @dm.query
    def die(self, n: int) -> int:
        time.sleep(0.1)  # the other caller's task is in the pool by now
        os.kill(os.getpid(), signal.SIGKILL)
        return n

    @dm.query
    def waits(self, k: int) -> int:
        return self.die(0) + k

    @dm.query
    def square(self, n: int) -> int:
        return n * n


# -- exceptions that cannot come back as themselves --------------------------------------------


class NeedsTwo(Exception):
    """Pickles, but does not load: its ``args`` are one message, its ``__init__`` wants two."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} failed: {why}")


class HoldsALock(Exception):
    """Does not pickle: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holding a lock")
        self.lock = threading.Lock()


def fail_unreturnably(n: int) -> int:
    if n == 1:
        raise NeedsTwo("item 1", "on purpose")
    if n == 2:
        raise HoldsALock
    return n * 10


def dies_at_three(n: int) -> int:
    """Kills the worker process that runs item 3."""
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * 10


def worker_pid(_: object) -> int:
    time.sleep(0.05)  # long enough for each worker to take some
    return os.getpid()


def lock_for_odd(n: int) -> Any:
    """Returns what cannot be pickled back (a lock) for odd items."""
    return threading.Lock() if n % 2 else n * 10


def announce_then_wait(started: dm.Event, never: dm.Event) -> int:
    """Says it runs, then waits for an event nobody sets (its worker is killed)."""
    started.set()
    never.wait(120)
    return os.getpid()


def traced_memory() -> int:
    """This process's memory as tracemalloc counts it (started on the first call), after a
    collection: on processes, broadcast to every worker."""
    import gc
    import tracemalloc

    if not tracemalloc.is_tracing():
        tracemalloc.start()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]
