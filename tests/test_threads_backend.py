"""The threads backend: threading-compatibility of each primitive.

The races under stress, on threads and processes alike, are in test_stress.py. Every test has
a timeout, so a deadlock fails instead of hanging.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _concurrency import JOIN_TIMEOUT, in_thread, start_thread, wait_until, wait_until_blocked

import dualmode as dm
from dualmode.backends import threads as th

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("switch_often")]


# -- the pool: a worker that waits on nested tasks ------------------------------------------


@pytest.mark.parametrize("repeat", range(10))
def test_a_pool_worker_waiting_on_a_running_subtask_sleeps_until_it_finishes(
    repeat: int,
) -> None:
    """A task's nested par_map on a 2-worker pool: its worker runs one subtask itself, finds
    nothing more to run while the other worker holds the second, and sleeps; the second's end
    wakes it, and the results come back in order."""
    backend = th.ThreadsBackend(workers=2)
    outer: list[threading.Thread] = []
    other_started = threading.Event()

    def inner(i: int) -> int:
        if threading.current_thread() is outer[0]:
            # Polled, not waited for: the only blocking wait of this thread must be the pool's.
            wait_until(other_started.is_set)  # the other worker took the other subtask
        else:
            other_started.set()
            wait_until_blocked(outer[0])  # the waiting worker is asleep, not running tasks
        return i * 10

    def nested(_: int) -> list[int]:
        outer.append(threading.current_thread())
        return dm.par_map(inner, [0, 1], chunksize=1, backend=backend)

    try:
        assert dm.par_map(nested, [0], backend=backend) == [[0, 10]]
    finally:
        backend.close()


# -- the backend and construction through the public API -----------------------------------


def test_backend_identity() -> None:
    backend = dm.Lock(backend="threads").backend
    assert isinstance(backend, th.ThreadsBackend)
    assert backend.name == "threads"
    assert backend.parallel is True
    assert backend.workers >= 1


@pytest.mark.parametrize(
    ("public", "args"),
    [
        (dm.Lock, ()),
        (dm.RLock, ()),
        (dm.Semaphore, (2,)),
        (dm.BoundedSemaphore, (2,)),
        (dm.Event, ()),
        (dm.Condition, ()),
        (dm.Barrier, (2,)),
        (dm.RwLock, ()),
        (dm.Mutex, (1,)),
        (dm.OnceCell, ()),
        (dm.AtomicInt, (3,)),
        (dm.WorkerLocal, (list,)),
        (dm.ShardedDict, ()),
        (dm.FreezeLock, (1,)),
        (dm.Queue, (3,)),
    ],
)
def test_public_classes_build_threads_classes(public: type[Any], args: tuple[Any, ...]) -> None:
    with dm.use("threads") as backend:
        obj = public(*args)
    # The threads class itself, or for Lock its subclass that records its holder where the
    # deadlock watchdog is on (the test session's default).
    assert type(obj) is getattr(th, public.__name__) or type(obj) is th.WatchedLock
    assert isinstance(obj, public)
    assert obj.backend is backend
    assert type(public(*args, backend="threads")) is type(obj)


# -- threading compatibility -------------------------------------------------------------


def test_lock_like_threading() -> None:
    lock = dm.Lock(backend="threads")
    assert not lock.locked()
    assert lock.acquire() is True
    assert lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.01) is False
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    in_thread(lock.release)  # like threading.Lock, any thread may release it
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
        assert in_thread(lambda: lock.acquire(timeout=0.01)) is False
    assert not lock.locked()


def test_rlock_like_threading() -> None:
    rlock = dm.RLock(backend="threads")
    with pytest.raises(RuntimeError):
        rlock.release()
    assert rlock.acquire()
    assert rlock.acquire(False)
    with rlock:
        assert in_thread(lambda: rlock.acquire(False)) is False
        with pytest.raises(RuntimeError):
            in_thread(rlock.release)  # owned by this thread
    rlock.release()
    rlock.release()
    with pytest.raises(RuntimeError):
        rlock.release()

    def take_and_release() -> bool:
        with rlock:
            return True

    assert in_thread(take_and_release)


def test_semaphore_like_threading() -> None:
    sem = dm.Semaphore(2, backend="threads")
    assert sem.acquire() and sem.acquire(blocking=False)
    assert sem.acquire(blocking=False) is False
    assert sem.acquire(timeout=0.01) is False
    sem.release(2)
    with sem:
        assert sem.acquire(False)
        assert not sem.acquire(False)
        sem.release()
    with pytest.raises(ValueError):
        dm.Semaphore(-1, backend="threads")
    with pytest.raises(ValueError):
        sem.release(0)
    sem.release(5)  # an unbounded semaphore may grow


def test_bounded_semaphore_raises_on_over_release() -> None:
    sem = dm.BoundedSemaphore(2, backend="threads")
    assert isinstance(sem, th.Semaphore)
    with pytest.raises(ValueError):
        sem.release()
    assert sem.acquire()
    sem.release()
    with pytest.raises(ValueError):
        sem.release()


def test_semaphore_release_wakes_a_waiter() -> None:
    sem = dm.Semaphore(0, backend="threads")
    waiter = start_thread(sem.acquire)
    sem.release()
    waiter.join(JOIN_TIMEOUT)
    assert not waiter.is_alive()
    assert not sem.acquire(False)


def test_event_like_threading() -> None:
    event = dm.Event(backend="threads")
    assert not event.is_set()
    assert event.wait(0.01) is False
    woken: list[bool] = []
    waiters = [start_thread(lambda: woken.append(event.wait())) for _ in range(3)]
    event.set()
    for waiter in waiters:
        waiter.join(JOIN_TIMEOUT)
    assert woken == [True, True, True]
    assert event.wait() is True and event.wait(0) is True
    event.clear()
    assert not event.is_set()


def test_condition_like_threading() -> None:
    cond = dm.Condition(backend="threads")
    with pytest.raises(RuntimeError):
        cond.wait(0.01)
    with pytest.raises(RuntimeError):
        cond.notify()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: 7, timeout=0.01) == 7
        assert cond.wait_for(lambda: 0, timeout=0.01) == 0
        with cond:  # the default lock is an RLock
            pass
    assert cond.acquire() and cond.acquire(False)
    cond.release()
    cond.release()


@pytest.mark.parametrize("kind", [dm.Lock, dm.RLock])
def test_condition_over_a_threads_lock(kind: type[Any]) -> None:
    lock = kind(backend="threads")
    cond = dm.Condition(lock, backend="threads")
    with cond:
        assert in_thread(lambda: lock.acquire(False)) is False  # the same underlying lock
        assert cond.wait(0.01) is False
    assert lock.acquire(False)
    lock.release()


def test_condition_refuses_a_lock_of_another_backend() -> None:
    with pytest.raises(TypeError, match=r"threads backend.*'serial'.*backend='threads'"):
        dm.Condition(dm.Lock(backend="serial"), backend="threads")


def _wait_released_every_hold(cond: Any, lock: Any, holds: int) -> None:
    """Wait on *cond* with *lock* held *holds* times: a notifier can take the lock meanwhile,
    and the wait gives back every hold."""
    ready: list[bool] = []

    def notify() -> None:
        with cond:
            ready.append(True)
            cond.notify()

    for _ in range(holds):
        cond.acquire()
    notifier = start_thread(notify)
    assert cond.wait_for(lambda: ready, timeout=JOIN_TIMEOUT)
    assert in_thread(lambda: lock.acquire(False)) is False  # held again after the wait
    for _ in range(holds):
        cond.release()
    notifier.join(JOIN_TIMEOUT)
    assert lock.acquire(False)
    lock.release()


@pytest.mark.parametrize(
    ("kind", "holds"), [(threading.Lock, 1), (threading.RLock, 3)], ids=["Lock", "RLock"]
)
def test_condition_over_a_threading_lock(kind: Callable[[], Any], holds: int) -> None:
    """As threading.Condition(lock): CPython's lock_tests rely on it (tests/test_lock_tests.py)."""
    for _ in range(20):
        lock = kind()
        _wait_released_every_hold(dm.Condition(lock, backend="threads"), lock, holds)


def test_threading_condition_over_a_threads_rlock() -> None:
    """threading.Condition waits on a threads RLock through its private methods, so a wait
    releases a nested hold entirely."""
    for _ in range(20):
        lock = dm.RLock(backend="threads")
        _wait_released_every_hold(threading.Condition(lock), lock, 3)


def test_condition_notify_wakes_waiters() -> None:
    cond = dm.Condition(dm.Lock(backend="threads"), backend="threads")
    items: list[int] = []
    taken: list[int] = []

    def consume() -> None:
        with cond:
            cond.wait_for(lambda: items)
            taken.append(items.pop())

    consumers = [start_thread(consume) for _ in range(3)]
    for i in range(3):
        with cond:
            items.append(i)
            cond.notify()
    for consumer in consumers:
        consumer.join(JOIN_TIMEOUT)
        assert not consumer.is_alive()
    assert sorted(taken) == [0, 1, 2]


def test_barrier_like_threading() -> None:
    with pytest.raises(ValueError):
        dm.Barrier(0, backend="threads")
    assert dm.Barrier(1, backend="threads").wait() == 0
    barrier = dm.Barrier(2, backend="threads", timeout=0.01)
    assert (barrier.parties, barrier.n_waiting, barrier.broken) == (2, 0, False)
    with pytest.raises(dm.BrokenBarrierError):
        barrier.wait()  # the default timeout expires and breaks it
    assert barrier.broken
    with pytest.raises(dm.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert not barrier.broken
    barrier.abort()
    assert barrier.broken


def test_rwlock_basics() -> None:
    rw = dm.RwLock(backend="threads")
    with pytest.raises(RuntimeError):
        rw.release_read()
    with pytest.raises(RuntimeError):
        rw.release_write()
    with pytest.raises(ValueError):
        rw.acquire_read(False, 1)
    with pytest.raises(ValueError):
        rw.acquire_write(timeout=-3)
    with pytest.raises(TypeError):
        rw.acquire_read(timeout=None)
    with rw.read(), rw.read():  # readers share
        assert in_thread(lambda: rw.acquire_read(False))
        rw.release_read()  # holds are counted, not owned
        assert rw.acquire_write(False) is False
        assert rw.acquire_write(timeout=0.01) is False
    with rw.write():
        assert rw.acquire_read(False) is False
        assert rw.acquire_read(timeout=0.01) is False
        assert rw.acquire_write(timeout=0.01) is False
    assert rw.acquire_write(False)
    rw.release_write()
    with pytest.raises(RuntimeError):
        rw.release_write()


def test_rwlock_waiting_writer_blocks_new_readers() -> None:
    rw = dm.RwLock(backend="threads")
    rw.acquire_read()
    writer_in = threading.Event()

    def write() -> None:
        with rw.write():
            writer_in.set()

    def new_reader_turned_away() -> bool:
        if rw.acquire_read(False):
            rw.release_read()
            return False
        return True

    writer = start_thread(write)
    # Once the writer waits, a new reader is turned away although only readers hold the lock.
    wait_until(new_reader_turned_away)
    assert not writer_in.is_set()
    rw.release_read()
    writer.join(JOIN_TIMEOUT)
    assert writer_in.is_set()
    assert rw.acquire_read(False)
    rw.release_read()


def test_rwlock_writer_timing_out_lets_readers_in() -> None:
    rw = dm.RwLock(backend="threads")
    rw.acquire_read()
    assert in_thread(lambda: rw.acquire_write(timeout=0.05)) is False
    assert rw.acquire_read(False)  # no writer waits any more
    rw.release_read()
    rw.release_read()
    assert rw.acquire_write(False)
    rw.release_write()


def test_mutex_guards_its_value() -> None:
    mutex = dm.Mutex([1], backend="threads")
    with mutex.lock() as guard:
        guard.value = [*guard.value, 2]
        assert mutex.try_lock() is None
        assert in_thread(mutex.try_lock) is None
    with pytest.raises(RuntimeError):
        guard.value  # noqa: B018 - a released guard refuses access
    guard2 = mutex.try_lock()
    assert guard2 is not None
    assert guard2.value == [1, 2]
    guard2.release()
    with pytest.raises(RuntimeError):
        mutex._release()


def test_once_cell_basics() -> None:
    cell = dm.OnceCell(backend="threads")
    assert cell.get() is None and cell.get("d") == "d" and not cell.is_set()
    with pytest.raises(ZeroDivisionError):
        cell.get_or_init(lambda: 1 // 0)
    assert not cell.is_set()

    def init() -> str:
        assert cell.set("during") is False  # being initialised
        return "value"

    assert cell.get_or_init(init) == "value"
    assert cell.get_or_init(lambda: "other") == "value"
    assert cell.set("again") is False
    other = dm.OnceCell(backend="threads")
    assert other.set(None) is True  # None is a value like any other
    assert other.is_set() and other.get("d") is None


def test_once_cell_reentrant_init_raises_borrow_error() -> None:
    cell = dm.OnceCell(backend="threads")
    with pytest.raises(dm.BorrowError):
        cell.get_or_init(lambda: cell.get_or_init(lambda: 1))
    assert not cell.is_set()
    assert cell.get_or_init(lambda: 2) == 2  # the failed claim was abandoned


def test_once_cell_protocol_checks_the_claimer() -> None:
    cell = dm.OnceCell(backend="threads")
    assert cell._claim() == (False, None)
    with pytest.raises(RuntimeError):
        in_thread(lambda: cell._publish(1))
    cell._publish(1)
    assert cell._claim() == (True, 1)


def test_atomic_int_operations() -> None:
    atomic = dm.AtomicInt(5, backend="threads")
    assert atomic.load() == 5
    assert atomic.fetch_add(3) == 5
    assert atomic.fetch_sub(2) == 8
    assert atomic.swap(10) == 6
    assert atomic.compare_exchange(1, 20) == 10  # no exchange
    assert atomic.compare_exchange(10, 20) == 10
    assert atomic.load() == 20
    atomic.store(-1)
    assert atomic.load() == -1
    for bad in (1.5, "1", None):
        with pytest.raises(TypeError):
            atomic.store(bad)
        with pytest.raises(TypeError):
            atomic.fetch_add(bad)
    with pytest.raises(TypeError):
        dm.AtomicInt(2.0, backend="threads")
    assert atomic.load() == -1


def test_worker_local_one_value_per_thread() -> None:
    local = dm.WorkerLocal(list, backend="threads")
    mine = local.get()
    assert local.get() is mine
    theirs = in_thread(local.get)
    assert theirs is not mine
    assert [id(v) for v in local.collect()] == [id(mine), id(theirs)]


def test_worker_local_factory_reentry_raises() -> None:
    local: Any = None
    local = dm.WorkerLocal(lambda: local.get(), backend="threads")
    with pytest.raises(dm.BorrowError):
        local.get()
    assert local.collect() == []


def test_worker_local_survives_reused_thread_idents() -> None:
    local = dm.WorkerLocal(object, backend="threads")
    seen = [in_thread(local.get) for _ in range(10)]  # idents are usually reused here
    assert len({id(v) for v in seen}) == 10
    assert local.collect() == seen


def test_sharded_dict_operations() -> None:
    shards = dm.ShardedDict(backend="threads")
    assert th.SHARDS >= 32 and th.SHARDS & (th.SHARDS - 1) == 0
    assert shards.get("a") is None and "a" not in shards and len(shards) == 0
    shards["a"] = 1
    shards.set(("t", 2), 2)
    assert shards["a"] == 1 and shards.get(("t", 2)) == 2 and "a" in shards
    assert shards.setdefault("a", 9) == 1 and shards.setdefault("b") is None
    assert shards.get_or_insert_with("c", lambda: 3) == 3
    assert shards.get_or_insert_with("c", lambda: 4) == 3
    assert dict(shards.items()) == {"a": 1, ("t", 2): 2, "b": None, "c": 3}
    assert len(shards) == 4
    assert shards.pop("a") == 1 and shards.pop("a", "gone") == "gone"
    with pytest.raises(KeyError):
        shards.pop("a")
    with pytest.raises(KeyError):
        shards["a"]
    for i in range(1000):
        shards[i] = i
    used = sum(1 for shard in shards._shards if shard)
    assert used == th.SHARDS  # keys really spread over every shard


def test_freeze_lock_lifecycle() -> None:
    fl = dm.FreezeLock([1], backend="threads")
    assert fl.read() == [1] and not fl.frozen
    with fl.write() as guard:
        guard.value = [*guard.value, 2]
    assert fl.read() == [1, 2]
    assert fl.freeze() == [1, 2] and fl.frozen
    assert fl.freeze() == [1, 2]  # idempotent
    with pytest.raises(dm.BorrowError):
        fl.write()
    assert fl.read() == [1, 2]
    with pytest.raises(RuntimeError):
        fl._release_write()


def test_freeze_waits_for_a_live_writer() -> None:
    fl = dm.FreezeLock(0, backend="threads")
    guard = fl.write()
    frozen: list[int] = []
    freezer = start_thread(lambda: frozen.append(fl.freeze()))
    freezer.join(0.05)
    assert frozen == []
    guard.value = 1
    guard.release()
    freezer.join(JOIN_TIMEOUT)
    assert frozen == [1] and fl.read() == 1


def test_freeze_lock_writer_queued_behind_freeze() -> None:
    fl = dm.FreezeLock(0, backend="threads")
    guard = fl.write()
    outcome: list[str] = []

    def late_writer() -> None:
        try:
            with fl.write() as late:
                late.value = "late"
            outcome.append("wrote")
        except dm.BorrowError:
            outcome.append("frozen")

    workers = [start_thread(late_writer), start_thread(fl.freeze)]
    for worker in workers:  # both queue up behind the live guard
        wait_until_blocked(worker)
    guard.release()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    # Whichever got the lock first, nothing was written after the freeze.
    assert (outcome, fl.read()) in ((["wrote"], "late"), (["frozen"], 0))
    assert fl.frozen


def test_queue_like_queue_queue() -> None:
    q = dm.Queue(2, backend="threads")
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.01)
    with pytest.raises(ValueError):
        q.put(3, timeout=-1)
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.task_done()
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    q.join()  # nothing unfinished
    assert dm.QueueEmpty is queue.Empty and dm.QueueFull is queue.Full


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return ("returned", call())
    except Exception as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("maxsize", [0, 2])
@pytest.mark.parametrize("prefill", [0, 1, 2])
@pytest.mark.parametrize("method", ["put", "get"])
@pytest.mark.parametrize(
    "kwargs",
    [{"block": False}, {"timeout": 0}, {"timeout": 0.001}, {"timeout": -1},
     {"block": False, "timeout": -1}],
)  # fmt: skip
@pytest.mark.parametrize(
    "shutdown", [None, False, True] if hasattr(queue.Queue, "shutdown") else [None]
)
def test_queue_calls_match_queue_queue(
    maxsize: int, prefill: int, method: str, kwargs: dict[str, Any], shutdown: bool | None
) -> None:
    """Same outcome (value or exception type) and size as queue.Queue, shutdown too on 3.13+."""
    ours, theirs = dm.Queue(maxsize, backend="threads"), queue.Queue(maxsize)
    results = []
    for q in (ours, theirs):
        for i in range(prefill):
            q.put_nowait(i)
        if shutdown is not None:
            q.shutdown(immediate=shutdown)
        args = ("item",) if method == "put" else ()
        results.append((outcome(functools.partial(getattr(q, method), *args, **kwargs)), q.qsize()))
    assert results[0] == results[1]


def test_queue_blocking_get_and_put() -> None:
    q = dm.Queue(1, backend="threads")
    got: list[int] = []
    getter = start_thread(lambda: got.append(q.get()))
    q.put(1)
    getter.join(JOIN_TIMEOUT)
    assert got == [1]
    q.put(2)
    putter = start_thread(lambda: q.put(3))
    assert q.get() == 2
    putter.join(JOIN_TIMEOUT)
    assert q.get() == 3


def test_queue_join_waits_for_task_done() -> None:
    q = dm.Queue(backend="threads")
    for i in range(3):
        q.put(i)
    joined = threading.Event()
    joiner = start_thread(lambda: (q.join(), joined.set()))
    for _ in range(3):
        q.get()
        assert not joined.is_set()
        q.task_done()
    joiner.join(JOIN_TIMEOUT)
    assert joined.is_set()


def test_queue_shutdown() -> None:
    q = dm.Queue(backend="threads")
    q.put(1)
    q.put(2)
    q.shutdown()
    with pytest.raises(dm.QueueShutDown):
        q.put(3)
    assert q.get() == 1 and q.get_nowait() == 2  # queued items still come out
    for call in (q.get, q.get_nowait, lambda: q.get(timeout=0.01)):
        with pytest.raises(dm.QueueShutDown):
            call()


def test_queue_shutdown_wakes_blocked_callers() -> None:
    empty = dm.Queue(backend="threads")
    full = dm.Queue(1, backend="threads")
    full.put(0)
    raised: list[type[BaseException]] = []

    def expect_shutdown(call: Callable[[], object]) -> None:
        try:
            call()
        except dm.QueueShutDown as exc:
            raised.append(type(exc))

    workers = [
        start_thread(lambda: expect_shutdown(empty.get)),
        start_thread(lambda: expect_shutdown(lambda: full.put(1))),
    ]
    for worker in workers:
        wait_until_blocked(worker)
    empty.shutdown()
    full.shutdown()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    assert raised == [dm.QueueShutDown, dm.QueueShutDown]
    assert full.get() == 0  # a non-immediate shutdown keeps the item


def test_queue_immediate_shutdown_drops_items_and_releases_join() -> None:
    q = dm.Queue(backend="threads")
    for i in range(3):
        q.put(i)
    joiner = start_thread(q.join)
    q.shutdown(immediate=True)
    joiner.join(JOIN_TIMEOUT)
    assert not joiner.is_alive()
    assert q.qsize() == 0
    with pytest.raises(dm.QueueShutDown):
        q.get(timeout=1)
    with pytest.raises(ValueError):
        q.task_done()
