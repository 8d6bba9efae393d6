"""Misuse, on every backend: each case raises the exception named, with a message that says
what was wrong and what to do (the key words asserted), or works where the issue says it must
(a generator for the items). Wrong constructor arguments have tests of their own in
test_primitive_arguments.py; these are wrong uses of working objects and functions.

Where a ``threading`` or ``queue`` class raises the same error for the same misuse, dualmode
keeps its type and, for the locks and conditions, its wording: code written for ``threading``
may match on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

import dualmode as dm
from dualmode.config import load_backend

pytestmark = pytest.mark.timeout(60)


class Misuse(NamedTuple):
    """*call(backend name)* raises *error* with a message matching *words* (a regex)."""

    name: str
    call: Callable[[str], object]
    error: type[BaseException]
    words: str
    only: str | None = None  # the one backend where it applies, if not every one


def _shut_down_queue(backend: str) -> dm.Queue:
    queue = dm.Queue(backend=backend)
    queue.shutdown()
    return queue


def _closed_backend_lock(backend: str) -> object:
    closed = load_backend(backend)(2)
    lock = closed.create_lock()
    closed.close()
    return lock.acquire(timeout=5)


class Values(dm.Database):
    source = dm.input()

    @dm.query
    def length(self, key: str) -> int:
        return len(self.source[key])


MISUSES = [
    # -- locks and semaphores: threading's errors, threading's words --------------------------
    Misuse("Lock.release unheld", lambda b: dm.Lock(backend=b).release(), RuntimeError, "unlocked"),
    Misuse(
        "RLock.release unheld", lambda b: dm.RLock(backend=b).release(), RuntimeError, "un-acquired"
    ),
    Misuse(
        "BoundedSemaphore released too often",
        lambda b: dm.BoundedSemaphore(1, backend=b).release(),
        ValueError,
        "released too many times",
    ),
    Misuse(
        "Semaphore.release(0)",
        lambda b: dm.Semaphore(backend=b).release(0),
        ValueError,
        "one or more",
    ),
    Misuse(
        "acquire with a negative timeout",
        lambda b: dm.Lock(backend=b).acquire(timeout=-2),
        ValueError,
        "non-negative",
    ),
    Misuse(
        "acquire with a timeout that is text",
        lambda b: dm.Lock(backend=b).acquire(timeout="1"),
        TypeError,
        r"number of seconds.*got str: '1'",
    ),
    Misuse(
        "a non-blocking acquire with a timeout",
        lambda b: dm.Semaphore(backend=b).acquire(False, timeout=1),
        ValueError,
        "non-blocking",
    ),
    Misuse(
        "Condition.wait without its lock",
        lambda b: dm.Condition(backend=b).wait(0.01),
        RuntimeError,
        "un-acquired lock",
    ),
    Misuse(
        "Condition.notify without its lock",
        lambda b: dm.Condition(backend=b).notify(),
        RuntimeError,
        "un-acquired lock",
    ),
    # -- barrier, queue, once cell: dualmode's words ------------------------------------------
    Misuse(
        "Barrier.wait that times out",
        lambda b: dm.Barrier(2, backend=b).wait(timeout=0.01),
        dm.BrokenBarrierError,
        r"broken: a wait timed out.*reset\(\)",
    ),
    Misuse(
        "Queue.put after shutdown",
        lambda b: _shut_down_queue(b).put(1),
        dm.QueueShutDown,
        "shut down: it takes no more items; stop producing",
    ),
    Misuse(
        "Queue.get after shutdown, empty",
        lambda b: _shut_down_queue(b).get(),
        dm.QueueShutDown,
        "shut down and is empty.*catch dm.QueueShutDown",
    ),
    Misuse(
        "Queue.get with a negative timeout",
        lambda b: dm.Queue(backend=b).get(timeout=-1),
        ValueError,
        "non-negative",
    ),
    Misuse(
        "OnceCell.get_or_init of a value",
        lambda b: dm.OnceCell(backend=b).get_or_init(3),  # type: ignore[arg-type]
        TypeError,
        r"get_or_init\(\) argument 'fn' must be callable, got int",
    ),
    Misuse(
        "FreezeLock written once frozen",
        lambda b: _frozen(b).write(),
        dm.BorrowError,
        "frozen",
    ),
    Misuse(
        "a WorkerLocal factory that asks for its own value",
        lambda b: _self_made(b).get(),
        dm.BorrowError,
        r"the factory called get\(\) on its own WorkerLocal; make the value without asking",
    ),
    Misuse(
        "a Mutex guard used after its with-block",
        lambda b: _released_guard(b).value,
        RuntimeError,
        r"released; take a new one with mutex.lock\(\)",
    ),
    # -- parallel iteration -------------------------------------------------------------------
    Misuse(
        "par_map of something not callable",
        lambda b: dm.par_map(3, [1], backend=b),  # type: ignore[call-overload]
        TypeError,
        "'fn' must be callable, got int",
    ),
    Misuse(
        "par_map with its arguments swapped",
        lambda b: dm.par_map([1, 2], abs, backend=b),  # type: ignore[call-overload]
        TypeError,
        r"must be callable \(the function comes first\)",
    ),
    Misuse(
        "par_map of items that are not iterable",
        lambda b: dm.par_map(abs, None, backend=b),  # type: ignore[arg-type]
        TypeError,
        "'items' must be an iterable, got NoneType",
    ),
    Misuse(
        "par_map with chunksize 0",
        lambda b: dm.par_map(abs, [1], chunksize=0, backend=b),
        ValueError,
        "positive integer, or None",
    ),
    Misuse(
        "broadcast of something not callable",
        lambda b: dm.broadcast(3, backend=b),  # type: ignore[arg-type]
        TypeError,
        "'fn' must be callable",
    ),
    Misuse(
        "par_map of an item that cannot be pickled",
        lambda b: dm.par_map(id, [threading.Lock()], backend=b),
        TypeError,
        r"item 0 \(_thread.lock\) cannot be pickled.*use the threads backend",
        only="processes",
    ),
    # -- configuration and queries ------------------------------------------------------------
    Misuse(
        "an unknown backend",
        lambda b: dm.Lock(backend="nope"),
        dm.ConfigError,
        "unknown dualmode backend 'nope'; choose one of",
    ),
    Misuse(
        "a worker count that is text",
        lambda b: Values(backend=b, workers="2"),  # type: ignore[arg-type]
        dm.ConfigError,
        "an int, not text",
    ),
    Misuse(
        "a query key that cannot be hashed",
        lambda b: Values(backend=b).length([1]),  # type: ignore[arg-type]
        TypeError,
        "unhashable, so it cannot be a memo key; pass a hashable value",
    ),
    Misuse(
        "an input read before it is set",
        lambda b: Values(backend=b).length("a.py"),
        KeyError,
        r"no value for 'a.py'; set it first \(db.source\['a.py'\] = ...\)",
    ),
    Misuse(
        "lru=0",
        lambda b: dm.query(lru=0)(len),
        ValueError,
        "lru must be at least 1 .*; pass lru=None to keep every value",
    ),
    Misuse(
        "lru that is text",
        lambda b: dm.query(lru="100")(len),  # type: ignore[call-overload]
        TypeError,
        r"lru must be a positive int \(the most values to keep\) or None",
    ),
    Misuse(
        "lru=True",
        lambda b: dm.query(lru=True)(len),
        TypeError,
        "lru must be a positive int",
    ),
    Misuse(
        "lru with local=True",
        lambda b: dm.query(lru=10, local=True)(len),
        ValueError,
        "lru= and local=True cannot be combined.*drop one of the two options",
    ),
    Misuse(
        "a primitive used after its backend was closed",
        _closed_backend_lock,
        dm.WorkerCrashed,
        "was closed; every primitive it hosted is lost",
        only="processes",
    ),
]


def _frozen(backend: str) -> dm.FreezeLock:
    cell = dm.FreezeLock(1, backend=backend)
    cell.freeze()
    return cell


def _self_made(backend: str) -> dm.WorkerLocal:
    local: dm.WorkerLocal | None = None

    def factory() -> object:
        assert local is not None
        return local.get()

    local = dm.WorkerLocal(factory, backend=backend)
    return local


def _released_guard(backend: str) -> Any:
    with dm.Mutex(1, backend=backend).lock() as guard:
        pass
    return guard


@pytest.mark.parametrize("misuse", MISUSES, ids=[m.name for m in MISUSES])
def test_misuse_raises_an_error_that_says_what_to_do(dualmode_backend: str, misuse: Misuse) -> None:
    if misuse.only is not None and misuse.only != dualmode_backend:
        pytest.skip(f"only on {misuse.only}")
    with pytest.raises(misuse.error, match=misuse.words):
        misuse.call(dualmode_backend)


def test_a_worker_local_makes_its_value_again_after_its_factory_failed(
    dualmode_backend: str,
) -> None:
    local = _self_made(dualmode_backend)
    with pytest.raises(dm.BorrowError):
        local.get()
    assert local.collect() == []  # nothing was kept
    attempts: list[int] = []

    def fails_once() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("the first attempt fails")
        return len(attempts)

    flaky = dm.WorkerLocal(fails_once, backend=dualmode_backend)
    with pytest.raises(ValueError, match="the first attempt fails"):
        flaky.get()
    assert flaky.get() == 2 and flaky.get() == 2 and flaky.collect() == [2]


def test_a_generator_of_items_works(dualmode_backend: str) -> None:
    """Items may be any iterable, a generator included (consumed once, before work starts)."""
    assert dm.par_map(abs, (n for n in range(-3, 0))) == [3, 2, 1]


def test_a_negative_event_timeout_returns_at_once_as_threading_does(dualmode_backend: str) -> None:
    assert dm.Event().wait(timeout=-1) is False
    assert threading.Event().wait(timeout=-1) is False


def test_in_process_primitives_outlive_their_closed_backend() -> None:
    """On threads (and serial) a primitive lives in the process: closing the backend stops
    its workers, and the lock still works. On processes it is lost with the coordinator
    (the WorkerCrashed case above)."""
    closed = load_backend("threads")(2)
    lock = closed.create_lock()
    closed.close()
    assert lock.acquire(timeout=5)
    lock.release()
