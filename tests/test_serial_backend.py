"""The serial backend's rustc meaning: misuse raises at once, never hangs; one thread only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _concurrency import in_thread

import dualmode as dm

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(autouse=True)
def _serial() -> Any:
    with dm.use("serial") as backend:
        yield backend


def _held_lock() -> None:
    lock = dm.Lock()
    lock.acquire()
    lock.acquire()


def _nested_with() -> None:
    lock = dm.Lock()
    with lock, lock:
        pass


def _write_while_read() -> None:
    rw = dm.RwLock()
    with rw.read(), rw.write():
        pass


def _read_while_write() -> None:
    rw = dm.RwLock()
    with rw.write(), rw.read():
        pass


def _mutex_twice() -> None:
    m = dm.Mutex(0)
    with m.lock(), m.lock():
        pass


def _condition_wait() -> None:
    cond = dm.Condition()
    with cond:
        cond.wait()


def _condition_wait_for() -> None:
    cond = dm.Condition()
    with cond:
        cond.wait_for(lambda: False)


def _full_queue_put() -> None:
    q = dm.Queue(maxsize=1)
    q.put(1)
    q.put(2)


def _queue_join() -> None:
    q = dm.Queue()
    q.put(1)
    q.join()


def _once_cell_reentry() -> None:
    cell = dm.OnceCell()
    cell.get_or_init(lambda: cell.get_or_init(lambda: 1))


def _freeze_lock_read_while_writing() -> None:
    fl = dm.FreezeLock(1)
    with fl.write():
        fl.read()


WOULD_BLOCK_FOREVER: dict[str, Callable[[], object]] = {
    "lock-reacquire": _held_lock,
    "lock-nested-with": _nested_with,
    "rwlock-write-while-read": _write_while_read,
    "rwlock-read-while-write": _read_while_write,
    "mutex-lock-twice": _mutex_twice,
    "semaphore-at-zero": lambda: dm.Semaphore(0).acquire(),
    "bounded-semaphore-at-zero": lambda: dm.BoundedSemaphore(0).acquire(),
    "event-wait-unset": lambda: dm.Event().wait(),
    "condition-wait": _condition_wait,
    "condition-wait-for": _condition_wait_for,
    "barrier-two-parties": lambda: dm.Barrier(2).wait(),
    "queue-get-empty": lambda: dm.Queue().get(),
    "queue-put-full": _full_queue_put,
    "queue-join-unfinished": _queue_join,
    "once-cell-reentrant-init": _once_cell_reentry,
    "freeze-lock-read-while-writing": _freeze_lock_read_while_writing,
}


@pytest.mark.parametrize("case", sorted(WOULD_BLOCK_FOREVER))
def test_would_block_forever_raises_borrow_error_at_once(case: str) -> None:
    start = time.monotonic()
    with pytest.raises(dm.BorrowError):
        WOULD_BLOCK_FOREVER[case]()
    assert time.monotonic() - start < 1.0


def test_timed_waits_return_their_timeout_result_at_once() -> None:
    start = time.monotonic()
    lock = dm.Lock()
    lock.acquire()
    assert lock.acquire(timeout=5) is False
    assert lock.acquire(blocking=False) is False
    assert dm.Semaphore(0).acquire(timeout=5) is False
    assert dm.Event().wait(timeout=5) is False
    cond = dm.Condition()
    with cond:
        assert cond.wait(timeout=5) is False
        assert cond.wait_for(lambda: 0, timeout=5) == 0
    with pytest.raises(dm.QueueEmpty):
        dm.Queue().get(timeout=5)
    barrier = dm.Barrier(2)
    with pytest.raises(dm.BrokenBarrierError):
        barrier.wait(timeout=5)
    assert barrier.broken
    rw = dm.RwLock()
    with rw.read():
        assert rw.acquire_write(timeout=5) is False
    assert time.monotonic() - start < 1.0


def test_lock_behaves_like_threading_lock() -> None:
    lock = dm.Lock()
    assert not lock.locked()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=1)


def test_rlock_counts_and_refuses_unheld_release() -> None:
    rlock = dm.RLock()
    with rlock, rlock:
        pass
    with pytest.raises(RuntimeError):
        rlock.release()


def test_bounded_semaphore_refuses_over_release() -> None:
    sem = dm.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        sem.release()
    assert sem.acquire()
    sem.release()


def test_condition_needs_the_lock_and_a_serial_lock() -> None:
    cond = dm.Condition(dm.Lock())
    with pytest.raises(RuntimeError):
        cond.notify()
    # A threading lock has no borrow flag to read: the message names the locks to use instead.
    with pytest.raises(TypeError, match=r"serial backend.*dm\.Lock\(\).*backend='threads'"):
        dm.Condition(threading.Lock())
    with pytest.raises(TypeError, match=r"serial backend, got .*threads\.(Watched)?Lock"):
        dm.Condition(dm.Lock(backend="threads"))


def test_barrier_of_one_runs_its_action() -> None:
    ran: list[int] = []
    assert dm.Barrier(1, action=lambda: ran.append(1)).wait() == 0
    assert ran == [1]


def test_once_cell_failed_initialiser_leaves_it_empty() -> None:
    cell = dm.OnceCell()
    with pytest.raises(ZeroDivisionError):
        cell.get_or_init(lambda: 1 // 0)
    assert not cell.is_set()
    assert cell.get_or_init(lambda: 7) == 7
    assert cell.set(8) is False
    assert cell.get() == 7


def test_freeze_lock_refuses_writes_once_frozen() -> None:
    fl = dm.FreezeLock([1])
    with fl.write() as guard:
        guard.value = [1, 2]
    assert fl.freeze() == [1, 2]
    assert fl.frozen
    with pytest.raises(dm.BorrowError, match="frozen"):
        fl.write()
    assert fl.read() == [1, 2]


def test_queue_shutdown_semantics() -> None:
    q = dm.Queue()
    q.put(1)
    q.shutdown()
    with pytest.raises(dm.QueueShutDown):
        q.put(2)
    assert q.get() == 1
    with pytest.raises(dm.QueueShutDown):
        q.get(block=False)


def test_worker_local_has_one_value() -> None:
    local = dm.WorkerLocal(list)
    local.get().append(1)
    local.get().append(2)
    assert local.collect() == [[1, 2]]


def test_atomic_int_is_an_int() -> None:
    atomic = dm.AtomicInt(5)
    assert atomic.fetch_add(2) == 5
    assert atomic.compare_exchange(7, 0) == 7
    assert atomic.compare_exchange(7, 1) == 0
    assert atomic.swap(3) == 0
    assert atomic.load() == 3
    with pytest.raises(TypeError):
        atomic.store(1.5)  # type: ignore[arg-type]


PRIMITIVE_USES: dict[str, Callable[[Any], object]] = {
    "Lock": lambda lock: lock.acquire(),
    "RLock": lambda lock: lock.acquire(),
    "Semaphore": lambda sem: sem.release(),
    "Event": lambda event: event.set(),
    "RwLock": lambda rw: rw.acquire_read(),
    "Mutex": lambda m: m.lock(),
    "OnceCell": lambda cell: cell.get_or_init(int),
    "AtomicInt": lambda atomic: atomic.fetch_add(1),
    "WorkerLocal": lambda local: local.get(),
    "ShardedDict": lambda d: d.set(1, 2),
    "FreezeLock": lambda fl: fl.read(),
    "Queue": lambda q: q.put(1),
    "Barrier": lambda b: b.abort(),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVE_USES))
def test_use_from_another_thread_raises_wrong_thread_error(name: str) -> None:
    args = {"WorkerLocal": (list,), "Barrier": (2,)}.get(name, ())
    primitive = getattr(dm, name)(*args)
    with pytest.raises(dm.WrongThreadError):
        in_thread(PRIMITIVE_USES[name], primitive)
