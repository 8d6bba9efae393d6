"""The threads backend: threading-compatibility of each primitive, then races under stress.

The stress tests start their threads together on a ``threading.Barrier`` and repeat for many
rounds, so a race shows up as a wrong count rather than by luck; every test has a timeout, so
a deadlock fails instead of hanging. Nothing asserts on elapsed time (the CI machines are
small and shared).
"""

from __future__ import annotations

import functools
import queue
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import dualmode as dm
from dualmode.backends import threads as th

T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)

ROUNDS = 30
THREADS = 4
JOIN_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """On a GIL build, switch threads far more often than every 5 ms so races show up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def run_threads(n: int, target: Callable[[int], T]) -> list[T]:
    """Run ``target(i)`` for i in range(n) on n threads released together; re-raise a failure."""
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


def in_thread(fn: Callable[[], T]) -> T:
    """Run *fn* on another thread and return its result (or raise its exception)."""
    return run_threads(1, lambda _: fn())[0]


def start_thread(fn: Callable[[], object]) -> threading.Thread:
    worker = threading.Thread(target=fn, daemon=True)
    worker.start()
    return worker


def wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


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
    assert type(obj) is getattr(th, public.__name__)
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


def test_condition_refuses_a_foreign_lock() -> None:
    with pytest.raises(TypeError, match=r"threads backend.*'serial'"):
        dm.Condition(dm.Lock(backend="serial"), backend="threads")
    with pytest.raises(TypeError, match="threads backend"):
        dm.Condition(threading.Lock(), backend="threads")


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
    time.sleep(0.02)  # let both queue up behind the live guard
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
    time.sleep(0.02)
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


# -- stress: 4 threads started together, each test repeated for many rounds --------------


def repeat(rounds: int, one_round: Callable[[], None]) -> None:
    for _ in range(rounds):
        one_round()


def test_free_threaded_build_really_runs_without_the_gil() -> None:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("a GIL build: the stress tests below only interleave at the GIL's pace")
    # An extension module without free-threading support turns the GIL back on at import.
    assert not sys._is_gil_enabled(), "the GIL was re-enabled, so these stress tests prove less"


@pytest.mark.stress
def test_stress_atomic_int_fetch_add_is_exact() -> None:
    per_thread = 2000

    def one_round() -> None:
        atomic = dm.AtomicInt(0, backend="threads")
        seen = run_threads(THREADS, lambda _: [atomic.fetch_add(1) for _ in range(per_thread)])
        assert atomic.load() == THREADS * per_thread
        # Every call saw a distinct previous value: no two increments overlapped.
        assert sorted(v for part in seen for v in part) == list(range(THREADS * per_thread))

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_atomic_int_compare_exchange_loop() -> None:
    per_thread = 1000

    def one_round() -> None:
        atomic = dm.AtomicInt(0, backend="threads")

        def increment(_: int) -> None:
            for _ in range(per_thread):
                current = atomic.load()
                while (found := atomic.compare_exchange(current, current + 1)) != current:
                    current = found

        run_threads(THREADS, increment)
        assert atomic.load() == THREADS * per_thread

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_sharded_dict_loses_no_update() -> None:
    per_thread, counters = 512, 8  # every counter gets the same share

    def one_round() -> None:
        shards = dm.ShardedDict(backend="threads")

        def new_atomic() -> Any:
            return dm.AtomicInt(0, backend="threads")

        def new_mutex() -> Any:
            return dm.Mutex(0, backend="threads")

        def work(t: int) -> None:
            for i in range(per_thread):
                shards[(t, i)] = i
                key = i % counters
                shards.get_or_insert_with(("atomic", key), new_atomic).fetch_add(1)
                with shards.get_or_insert_with(("mutex", key), new_mutex).lock() as guard:
                    guard.value += 1
                shards.setdefault(("first", key), t)
                # every thread races to insert each of these: all must share one counter
                shards.get_or_insert_with(("shared", i), new_atomic).fetch_add(1)

        run_threads(THREADS, work)
        entries = dict(shards.items())
        assert len(shards) == len(entries) == (THREADS + 1) * per_thread + 3 * counters
        assert all(entries[(t, i)] == i for t in range(THREADS) for i in range(per_thread))
        assert all(entries[("shared", i)].load() == THREADS for i in range(per_thread))
        expected = THREADS * per_thread // counters
        for key in range(counters):
            assert entries[("atomic", key)].load() == expected
            with entries[("mutex", key)].lock() as guard:
                assert guard.value == expected
            assert entries[("first", key)] in range(THREADS)

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_sharded_dict_pop_hands_each_key_out_once() -> None:
    keys = 2000
    gone = object()

    def one_round() -> None:
        shards = dm.ShardedDict(backend="threads")
        for i in range(keys):
            shards[i] = i
        popped = run_threads(
            THREADS, lambda _: [k for k in range(keys) if shards.pop(k, gone) is not gone]
        )
        assert Counter(k for part in popped for k in part) == Counter(range(keys))
        assert len(shards) == 0

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_rwlock_writers_exclude_everyone() -> None:
    def one_round() -> None:
        rw = dm.RwLock(backend="threads")
        state_lock = threading.Lock()
        inside = Counter[str]()
        violations: list[dict[str, int]] = []
        peak_readers = [0]

        def hold(role: str) -> None:
            with state_lock:
                inside[role] += 1
                if inside["write"] > 1 or (inside["write"] and inside["read"]):
                    violations.append(dict(inside))
                peak_readers[0] = max(peak_readers[0], inside["read"])
            time.sleep(0)  # let others try to come in
            with state_lock:
                inside[role] -= 1

        def work(t: int) -> None:
            for i in range(150):
                role = "write" if (i + t) % 4 == 0 else "read"
                acquire = rw.acquire_write if role == "write" else rw.acquire_read
                release = rw.release_write if role == "write" else rw.release_read
                if i % 10 == 5:  # mix in timed and non-blocking attempts
                    if not (acquire(timeout=0.001) if i % 20 == 5 else acquire(False)):
                        continue
                else:
                    acquire()
                hold(role)
                release()

        run_threads(THREADS, work)
        assert violations == []
        assert +inside == Counter()
        assert rw.acquire_write(False)  # the lock ends free
        rw.release_write()

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_rwlock_writer_not_starved_by_streaming_readers() -> None:
    def one_round() -> None:
        rw = dm.RwLock(backend="threads")
        stop = threading.Event()
        reads = dm.AtomicInt(0, backend="threads")

        def read_until_stopped() -> None:
            while not stop.is_set():
                with rw.read():
                    reads.fetch_add(1)
                    time.sleep(0.0005)  # readers overlap: the lock is never reader-free

        readers = [start_thread(read_until_stopped) for _ in range(THREADS - 1)]
        try:
            wait_until(lambda: reads.load() > 20)
            # Without writer preference this would wait for as long as readers keep coming.
            assert rw.acquire_write(timeout=JOIN_TIMEOUT)
            rw.release_write()
        finally:
            stop.set()
            for reader in readers:
                reader.join(JOIN_TIMEOUT)

    repeat(5, one_round)


@pytest.mark.stress
def test_stress_once_cell_runs_fn_exactly_once() -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend="threads")
        calls = dm.AtomicInt(0, backend="threads")

        def init() -> object:
            calls.fetch_add(1)
            time.sleep(0.001)  # widen the window for racers
            return object()

        values = run_threads(8, lambda _: cell.get_or_init(init))
        assert calls.load() == 1
        assert all(v is values[0] for v in values)

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_once_cell_failed_init_lets_the_next_caller_try() -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend="threads")
        calls = dm.AtomicInt(0, backend="threads")

        def init() -> str:
            if calls.fetch_add(1) == 0:
                time.sleep(0.001)
                raise KeyError("first")
            return "ok"

        def attempt(_: int) -> str:
            try:
                return cell.get_or_init(init)
            except KeyError:
                return "failed"

        results = run_threads(8, attempt)
        assert calls.load() == 2
        assert Counter(results) == {"failed": 1, "ok": 7}

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_once_cell_set_races_get_or_init() -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend="threads")

        def race(t: int) -> tuple[str, object]:
            if t % 2:
                return ("set", cell.set(t))
            return ("init", cell.get_or_init(lambda: t))

        results = run_threads(THREADS, race)
        value = cell.get()
        stored = [r for r in results if r == ("set", True)]
        assert len(stored) <= 1
        assert value % 2 == (1 if stored else 0)  # setters store odd, initialisers even
        assert all(got == value for kind, got in results if kind == "init")

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_once_cell_set_after_abandon_wakes_every_waiter() -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend="threads")
        assert cell._claim() == (False, None)  # this thread initialises...
        waiting = dm.AtomicInt(0, backend="threads")

        def wait_for_value(t: int) -> object:
            waiting.fetch_add(1)
            return cell.get_or_init(lambda: t)

        results: list[object] = []
        runner = start_thread(lambda: results.extend(run_threads(THREADS, wait_for_value)))
        wait_until(lambda: waiting.load() == THREADS)
        time.sleep(0.001)  # most of them are asleep in the cell by now
        cell._abandon()  # ...gives up, which wakes one waiter,
        cell.set("set")  # and a set() that beats it must wake the rest
        runner.join(JOIN_TIMEOUT)
        assert not runner.is_alive()
        assert results == [cell.get()] * THREADS

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_worker_local_one_value_per_thread() -> None:
    def one_round() -> None:
        local = dm.WorkerLocal(list, backend="threads")

        def work(t: int) -> int:
            for _ in range(50):
                local.get().append(t)
            return id(local.get())

        ids = run_threads(THREADS, work)
        collected = local.collect()
        assert sorted(map(id, collected)) == sorted(ids)
        assert sorted(collected) == [[t] * 50 for t in range(THREADS)]

    repeat(ROUNDS, one_round)


@pytest.mark.stress
def test_stress_queue_producers_consumers_then_shutdown() -> None:
    producers, per_producer = 2, 300

    def one_round() -> None:
        q = dm.Queue(4, backend="threads")  # small, so puts block too
        produced = dm.AtomicInt(0, backend="threads")

        def work(t: int) -> list[int]:
            if t < producers:
                for i in range(per_producer):
                    q.put(t * per_producer + i)
                produced.fetch_add(1)
                return []
            got = []
            while True:
                try:
                    got.append(q.get())
                except dm.QueueShutDown:
                    return got
                q.task_done()

        def shut_down_when_drained() -> None:
            wait_until(lambda: produced.load() == producers)
            q.join()
            q.shutdown()

        closer = start_thread(shut_down_when_drained)
        parts = run_threads(THREADS, work)
        closer.join(JOIN_TIMEOUT)
        consumed = parts[producers:]
        assert sorted(v for part in consumed for v in part) == list(range(producers * per_producer))
        for part in consumed:  # FIFO: each consumer saw each producer's items in order
            for p in range(producers):
                mine = [v for v in part if v // per_producer == p]
                assert mine == sorted(mine)

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_barrier_four_parties() -> None:
    cycles = 10
    actions = dm.AtomicInt(0, backend="threads")
    barrier = dm.Barrier(THREADS, action=lambda: actions.fetch_add(1), backend="threads")

    def one_round() -> None:
        indices = run_threads(THREADS, lambda _: [barrier.wait() for _ in range(cycles)])
        for cycle in range(cycles):
            assert sorted(part[cycle] for part in indices) == list(range(THREADS))

    repeat(ROUNDS, one_round)
    assert actions.load() == ROUNDS * cycles
    assert not barrier.broken and barrier.n_waiting == 0


@pytest.mark.stress
def test_stress_barrier_abort_breaks_every_waiter() -> None:
    def one_round() -> None:
        barrier = dm.Barrier(THREADS + 1, backend="threads")

        def wait(_: int) -> str:
            try:
                barrier.wait()
            except dm.BrokenBarrierError:
                return "broken"
            return "passed"

        def abort_when_all_wait() -> None:
            wait_until(lambda: barrier.n_waiting == THREADS)
            barrier.abort()

        aborter = start_thread(abort_when_all_wait)
        assert run_threads(THREADS, wait) == ["broken"] * THREADS
        aborter.join(JOIN_TIMEOUT)

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_condition_notify_delivers_every_item() -> None:
    total = 400

    def one_round() -> None:
        cond = dm.Condition(backend="threads")
        items: list[int] = []
        done = [False]

        def work(t: int) -> list[int]:
            if t == 0:
                for i in range(total):
                    with cond:
                        items.append(i)
                        cond.notify()
                with cond:
                    done[0] = True
                    cond.notify_all()
                return []
            got = []
            while True:
                with cond:
                    cond.wait_for(lambda: items or done[0])
                    if not items:
                        return got
                    got.append(items.pop(0))

        parts = run_threads(THREADS, work)
        assert sorted(v for part in parts for v in part) == list(range(total))

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_semaphore_bounds_concurrency() -> None:
    def one_round() -> None:
        sem = dm.BoundedSemaphore(2, backend="threads")
        inside = dm.AtomicInt(0, backend="threads")
        over: list[int] = []

        def work(_: int) -> None:
            for _ in range(200):
                with sem:
                    now = inside.fetch_add(1) + 1
                    if now > 2:
                        over.append(now)
                    inside.fetch_sub(1)

        run_threads(THREADS, work)
        assert over == []
        with pytest.raises(ValueError):
            sem.release()  # every unit came back

    repeat(ROUNDS // 2, one_round)


@pytest.mark.stress
def test_stress_freeze_lock_nothing_changes_after_freeze() -> None:
    def one_round() -> None:
        fl = dm.FreezeLock(0, backend="threads")

        def work(t: int) -> list[tuple[bool, int]]:
            seen = []  # (frozen before this read?, value read)
            for i in range(300):
                if t == 0 and i == 150:
                    fl.freeze()
                elif t == 1:
                    try:
                        with fl.write() as guard:
                            guard.value = i
                    except dm.BorrowError:
                        assert fl.frozen
                frozen = fl.frozen
                seen.append((frozen, fl.read()))
            return seen

        parts = run_threads(THREADS, work)
        final = fl.read()
        assert fl.frozen
        assert all(value == final for part in parts for frozen, value in part if frozen)

    repeat(ROUNDS // 2, one_round)
