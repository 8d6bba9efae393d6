"""The async twins of the primitives (``async with lock``, ``await sem.async_acquire()``,
``await event.async_wait()``), under asyncio and trio (anyio's plugin), on every backend.

Tasks and threads share the same objects: a task that waits never blocks its event loop, a
thread blocked in ``acquire()`` and a task in ``async_acquire()`` wait for the same lock, and a
cancelled or timed-out wait leaves nothing taken (docs/async.md).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from _concurrency import JOIN_TIMEOUT, start_thread, wait_until

import dualmode as dm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class _Held:
    """A Mutex or one side of an RwLock, seen as a lock (acquire, release, async_acquire,
    ``async with``), so that every test below runs on them too."""

    def __init__(self, acquire: Any, release: Any, take: Any) -> None:
        self._acquire, self._release, self._take = acquire, release, take

    def acquire(self, blocking: bool = True) -> bool:
        return bool(self._acquire(blocking))

    def release(self) -> None:
        self._release()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        return bool(await self._take(timeout))

    async def __aenter__(self) -> None:
        await self.async_acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _mutex(backend: str) -> _Held:
    mutex = dm.Mutex(0, backend=backend)
    guards: list[Any] = []

    def acquire(blocking: bool) -> bool:
        guard = mutex.lock() if blocking else mutex.try_lock()
        if guard is not None:
            guards.append(guard)
        return guard is not None

    async def take(timeout: float | None) -> bool:
        try:
            guards.append(await mutex.async_lock(timeout))
        except TimeoutError:
            return False
        return True

    return _Held(acquire, lambda: guards.pop().release(), take)


def _rw_write(backend: str) -> _Held:
    rw = dm.RwLock(backend=backend)
    return _Held(
        rw.acquire_write, rw.release_write, lambda timeout: rw._async_acquire("write", timeout)
    )


# (name, build): each builds a lock-like object of the backend named.
LOCKS: list[tuple[str, Callable[[str], Any]]] = [
    ("Lock", lambda backend: dm.Lock(backend=backend)),
    ("Semaphore", lambda backend: dm.Semaphore(1, backend=backend)),
    ("BoundedSemaphore", lambda backend: dm.BoundedSemaphore(1, backend=backend)),
    ("Mutex", _mutex),
    ("RwLock-write", _rw_write),
]
lock_kinds = pytest.mark.parametrize("build", [b for _, b in LOCKS], ids=[n for n, _ in LOCKS])


def _is_free(lock: Any) -> bool:
    """True if *lock* (a Lock or a one-unit semaphore) can be taken now; leaves it as it was."""
    if lock.acquire(False):
        lock.release()
        return True
    return False


class Ticker:
    """Counts the event loop's turns while a test waits: a loop that a waiting task blocked
    would not turn."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(0.005)
            self.ticks += 1


async def _with_ticker(body: Callable[[], Awaitable[None]]) -> int:
    ticker = Ticker()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker.run)
        await body()
        tasks.cancel_scope.cancel()
    return ticker.ticks


# -- every backend ---------------------------------------------------------------------------


@lock_kinds
async def test_async_with_takes_and_gives_back(dualmode_backend: str, build: Any) -> None:
    lock = build(dualmode_backend)
    for _ in range(3):
        async with lock:
            assert not _is_free(lock)
        assert _is_free(lock)
    assert await lock.async_acquire() is True
    lock.release()
    assert _is_free(lock)


async def test_event_async_wait_on_a_set_event(dualmode_backend: str) -> None:
    event = dm.Event(backend=dualmode_backend)
    event.set()
    assert await event.async_wait() is True
    assert await event.async_wait(timeout=0) is True
    event.clear()
    assert await event.async_wait(timeout=0) is False


@lock_kinds
@pytest.mark.parametrize(
    ("timeout", "error", "words"),
    [(-1, ValueError, ">= 0 seconds"), ("soon", TypeError, "number of seconds")],
)
async def test_a_bad_timeout_is_refused(
    dualmode_backend: str, build: Any, timeout: Any, error: type[Exception], words: str
) -> None:
    lock = build(dualmode_backend)
    with pytest.raises(error, match=words):
        await lock.async_acquire(timeout=timeout)
    with pytest.raises(error, match=words):
        await dm.Event(backend=dualmode_backend).async_wait(timeout=timeout)
    assert _is_free(lock)


@lock_kinds
async def test_a_wait_that_times_out_returns_false_and_takes_nothing(
    dualmode_backend: str, build: Any
) -> None:
    lock = build(dualmode_backend)
    lock.acquire()
    started = time.monotonic()
    assert await lock.async_acquire(timeout=0.05) is False
    elapsed = time.monotonic() - started
    # serial: at once (no one could release it); parallel: after the timeout.
    assert elapsed < 0.05 if dualmode_backend == "serial" else elapsed >= 0.04
    lock.release()
    assert _is_free(lock)
    assert await dm.Event(backend=dualmode_backend).async_wait(timeout=0.05) is False


# -- serial: one flow of control -------------------------------------------------------------


@lock_kinds
async def test_serial_waits_no_one_could_end_raise_borrow_error(build: Any) -> None:
    lock = build("serial")
    lock.acquire()
    with pytest.raises(dm.BorrowError, match="would block forever"):
        await lock.async_acquire()
    with pytest.raises(dm.BorrowError, match="would block forever"):
        async with lock:
            pass
    with pytest.raises(dm.BorrowError, match="Event that is not set"):
        await dm.Event(backend="serial").async_wait()
    lock.release()


async def test_serial_primitives_stay_with_their_thread() -> None:
    lock = dm.Lock(backend="serial")
    with pytest.raises(dm.WrongThreadError, match="created by thread"):
        await anyio.to_thread.run_sync(lambda: anyio.run(lock.async_acquire))


# -- parallel backends: tasks and threads share the objects ----------------------------------


@lock_kinds
async def test_a_waiting_task_does_not_block_its_loop(
    dualmode_parallel_backend: str, build: Any
) -> None:
    lock = build(dualmode_parallel_backend)
    lock.acquire()
    got: list[bool] = []

    async def body() -> None:
        releaser = threading.Timer(0.3, lock.release)
        releaser.start()
        with anyio.fail_after(JOIN_TIMEOUT):
            got.append(await lock.async_acquire())
        releaser.join()

    ticks = await _with_ticker(body)
    assert got == [True]
    assert ticks >= 10  # the loop turned while the task waited for a thread's release
    lock.release()
    assert _is_free(lock)


async def test_event_set_by_a_thread_wakes_every_task(dualmode_parallel_backend: str) -> None:
    event = dm.Event(backend=dualmode_parallel_backend)
    woken: list[int] = []

    async def waiter(i: int) -> None:
        assert await event.async_wait()
        woken.append(i)

    async def body() -> None:
        async with anyio.create_task_group() as tasks:
            for i in range(5):
                tasks.start_soon(waiter, i)
            await anyio.sleep(0.05)
            assert woken == []
            await anyio.to_thread.run_sync(event.set)

    with anyio.fail_after(JOIN_TIMEOUT):
        ticks = await _with_ticker(body)
    assert sorted(woken) == list(range(5))
    assert ticks >= 5


async def test_a_thread_waits_for_a_lock_a_task_holds(dualmode_parallel_backend: str) -> None:
    lock = dm.Lock(backend=dualmode_parallel_backend)
    async with lock:
        done = threading.Event()
        worker = start_thread(lambda: (lock.acquire(), lock.release(), done.set()))
        await anyio.sleep(0.05)
        assert not done.is_set()  # the thread waits for the task
    with anyio.fail_after(JOIN_TIMEOUT):
        while not done.is_set():
            await anyio.sleep(0.005)
    worker.join(JOIN_TIMEOUT)
    assert _is_free(lock)


async def test_semaphore_release_n_serves_threads_and_tasks(
    dualmode_parallel_backend: str,
) -> None:
    sem = dm.Semaphore(0, backend=dualmode_parallel_backend)
    got: list[str] = []
    threads = [start_thread(lambda: (sem.acquire(), got.append("thread"))) for _ in range(2)]

    async def task() -> None:
        assert await sem.async_acquire()
        got.append("task")

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for _ in range(2):
                tasks.start_soon(task)
            await anyio.sleep(0.05)
            sem.release(4)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert sorted(got) == ["task", "task", "thread", "thread"]
    assert not sem.acquire(False)  # every unit was taken once


async def test_threads_and_tasks_are_served_in_the_order_they_queued() -> None:
    """threads only: its Lock and Semaphore keep one FIFO queue for both kinds of waiter
    (processes' objects live in the coordinator, whose waits tasks reach in slices)."""
    for lock in (dm.Lock(backend="threads"), dm.Semaphore(1, backend="threads")):
        assert await _serve_alternately(lock) == [
            "task0",
            "thread1",
            "task2",
            "thread3",
            "task4",
            "thread5",
        ]
        assert _is_free(lock)


async def _serve_alternately(lock: Any) -> list[str]:
    """Queue tasks and threads in turn behind a held *lock*, release it: who got it, in order."""
    lock.acquire()
    order: list[str] = []

    def thread(name: str) -> None:
        with lock:
            order.append(name)

    async def task(name: str) -> None:
        async with lock:
            order.append(name)

    threads = []
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for i in range(6):
                if i % 2:
                    threads.append(start_thread(lambda i=i: thread(f"thread{i}")))
                else:
                    tasks.start_soon(task, f"task{i}")
                while len(lock._lot) <= i:  # queued before the next one comes
                    await anyio.sleep(0.001)
            lock.release()
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    return order


@lock_kinds
async def test_cancelled_waits_leave_nothing_taken(
    dualmode_parallel_backend: str, build: Any
) -> None:
    """Cancel a waiting task at random moments around a thread's release, so that the
    cancellation races the hand-over: afterwards the lock is free, or held by the task that
    got it, and the next caller succeeds: 1,000 trials per event loop and backend."""
    lock = build(dualmode_parallel_backend)
    trials = 1000
    rng = random.Random(1)
    outcomes = {"acquired": 0, "cancelled": 0}
    for _ in range(trials):
        lock.acquire()
        delay = rng.random() * 0.002
        releaser = threading.Timer(delay, lock.release)
        acquired = False
        with anyio.move_on_after(rng.random() * 0.002):
            releaser.start()
            acquired = await lock.async_acquire()
        releaser.join(JOIN_TIMEOUT)
        if acquired:
            lock.release()
        outcomes["acquired" if acquired else "cancelled"] += 1
        with anyio.fail_after(JOIN_TIMEOUT):
            assert await lock.async_acquire()  # the next caller succeeds
        lock.release()
    assert _is_free(lock)
    assert outcomes["acquired"] and outcomes["cancelled"]  # both sides of the race were hit


async def test_cancelled_event_waits_leave_no_waiter(dualmode_parallel_backend: str) -> None:
    event = dm.Event(backend=dualmode_parallel_backend)
    for _ in range(100):
        with anyio.move_on_after(0.001):
            await event.async_wait()
    if dualmode_parallel_backend == "threads":
        assert len(event._lot) == 0  # type: ignore[attr-defined]
    await anyio.to_thread.run_sync(event.set)
    assert await event.async_wait(timeout=1)


async def test_asyncio_task_cancel_gives_the_lock_back(
    anyio_backend: str, dualmode_parallel_backend: str
) -> None:
    """``asyncio.Task.cancel`` (not only anyio's cancel scopes) while a task waits."""
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.Task.cancel is asyncio's")
    lock = dm.Lock(backend=dualmode_parallel_backend)
    lock.acquire()
    waiting = asyncio.ensure_future(lock.async_acquire())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    lock.release()
    # threads: free at once. processes: a wait's slice still in flight on its helper thread
    # may take the lock just released, and gives it back as it ends (dualmode/off_loop.py).
    wait_until(lambda: _is_free(lock), timeout=5)
    # The grant and the cancellation at once: the task was handed the lock, and gives it back.
    lock.acquire()
    waiting = asyncio.ensure_future(lock.async_acquire())
    await asyncio.sleep(0.05)
    lock.release()
    waiting.cancel()
    try:
        assert await waiting is True
        lock.release()
    except asyncio.CancelledError:
        pass
    wait_until(lambda: _is_free(lock), timeout=5)


async def test_threads_event_survives_at_fork_reinit() -> None:
    """What ``threading`` does to its Events in a forked child: new internal locks, no waiters."""
    event = dm.Event(backend="threads")
    event.set()
    event._at_fork_reinit()  # type: ignore[attr-defined]
    assert event.is_set()
    event.clear()
    assert await event.async_wait(timeout=0.01) is False


async def test_mutex_async_lock_guards_the_value(dualmode_backend: str) -> None:
    mutex = dm.Mutex(1, backend=dualmode_backend)
    async with mutex.async_lock() as guard:
        guard.value = guard.value + 1
    guard = await mutex.async_lock(timeout=1)
    assert guard.value == 2
    guard.release()
    with mutex.lock() as held:
        assert held.value == 2


async def test_rwlock_async_read_and_write(dualmode_backend: str) -> None:
    rw = dm.RwLock(backend=dualmode_backend)
    async with rw.async_read(), rw.async_read():  # readers share
        with pytest.raises((TimeoutError, dm.BorrowError)):
            async with rw.async_write(timeout=0.01):
                pass
    async with rw.async_write():
        with pytest.raises(TimeoutError):
            async with rw.async_read(timeout=0):
                pass
    assert rw.acquire_write(False)
    rw.release_write()


async def test_a_task_reads_once_a_thread_stops_writing(dualmode_parallel_backend: str) -> None:
    rw = dm.RwLock(backend=dualmode_parallel_backend)
    rw.acquire_write()
    releaser = threading.Timer(0.2, rw.release_write)
    releaser.start()
    with anyio.fail_after(JOIN_TIMEOUT):
        async with rw.async_read():
            assert not rw.acquire_write(False)
    releaser.join()
    assert rw.acquire_write(False)
    rw.release_write()


# -- Barrier ---------------------------------------------------------------------------------


async def test_a_barrier_of_one_passes_at_once(dualmode_backend: str) -> None:
    assert await dm.Barrier(1, backend=dualmode_backend).async_wait() == 0


async def test_serial_barrier_waits_no_one_could_end() -> None:
    with pytest.raises(dm.BorrowError, match="would block forever"):
        await dm.Barrier(2, backend="serial").async_wait()
    barrier = dm.Barrier(2, backend="serial")
    with pytest.raises(dm.BrokenBarrierError):
        await barrier.async_wait(timeout=1)
    assert barrier.broken


async def test_tasks_and_threads_meet_at_a_barrier(dualmode_parallel_backend: str) -> None:
    """More tasks than anyio's default thread limit (40) on threads: each waits on a helper
    thread of its own, so none waits for a thread."""
    tasks_n = 45 if dualmode_parallel_backend == "threads" else 4
    barrier = dm.Barrier(tasks_n + 2, backend=dualmode_parallel_backend)
    indices: list[int] = []

    def late_party() -> None:
        time.sleep(0.1)  # the tasks wait meanwhile, and the loop turns
        indices.append(barrier.wait())

    threads = [start_thread(late_party) for _ in range(2)]

    async def party() -> None:
        indices.append(await barrier.async_wait())

    async def body() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(tasks_n):
                tasks.start_soon(party)

    with anyio.fail_after(JOIN_TIMEOUT):
        ticks = await _with_ticker(body)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert sorted(indices) == list(range(tasks_n + 2))
    assert ticks >= 5


async def test_a_cancelled_barrier_wait_breaks_the_barrier(dualmode_parallel_backend: str) -> None:
    """1,000 trials: a task waits with a thread that comes at a random moment, and is
    cancelled at another. Either both passed, or the barrier is broken for the thread too
    (no party waits for one that left); after reset() the next wait succeeds."""
    barrier = dm.Barrier(2, backend=dualmode_parallel_backend)
    rng = random.Random(4)
    outcomes = {"passed": 0, "broken": 0}
    for _ in range(1000):
        thread_got: list[object] = []

        def thread_party(got: list[object]) -> None:
            try:
                got.append(barrier.wait(timeout=JOIN_TIMEOUT))
            except threading.BrokenBarrierError as exc:
                got.append(exc)

        arrival = threading.Timer(rng.random() * 0.002, thread_party, (thread_got,))
        passed = False
        with anyio.move_on_after(rng.random() * 0.002):
            arrival.start()
            await barrier.async_wait()
            passed = True
        arrival.join(JOIN_TIMEOUT)
        assert thread_got
        if passed:
            assert isinstance(thread_got[0], int)
            outcomes["passed"] += 1
        elif isinstance(thread_got[0], int):
            outcomes["passed"] += 1  # both had met just as the cancellation came
        else:
            assert barrier.broken
            outcomes["broken"] += 1
        barrier.reset()
    assert outcomes["passed"] and outcomes["broken"]
    both = [start_thread(barrier.wait) for _ in range(1)]
    with anyio.fail_after(JOIN_TIMEOUT):
        assert await barrier.async_wait() in (0, 1)
    both[0].join(JOIN_TIMEOUT)
