"""The async twins of the primitives (``async with lock``, ``await sem.async_acquire()``,
``await event.async_wait()``), under asyncio and trio (anyio's plugin), on every backend.

Tasks and threads share the same objects: a task that waits never blocks its event loop, a
thread blocked in ``acquire()`` and a task in ``async_acquire()`` wait for the same lock, and a
cancelled or timed-out wait leaves nothing taken (docs/async.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from _concurrency import JOIN_TIMEOUT, RaceWindow, in_thread, start_thread, wait_until

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


def _asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.Task.cancel is asyncio's")


class Ticker:
    """Counts the event loop's turns while a test waits: a loop that a waiting task blocked
    would not turn. ``turned`` is set once it has turned *turns* times."""

    def __init__(self, turns: int) -> None:
        self.ticks = 0
        self._turns = turns
        self.turned = threading.Event()

    async def run(self) -> None:
        while True:
            await anyio.sleep(0.005)
            self.ticks += 1
            if self.ticks >= self._turns:
                self.turned.set()


async def _while_the_loop_turns(
    body: Callable[[], Awaitable[None]], release: Callable[[], None], turns: int = 10
) -> None:
    """Run *body*, which waits for a thread, while a thread calls *release* once the loop
    has turned *turns* times: the loop turned while the body waited. (A release after a
    fixed sleep, then a count of the turns, fails on a loaded machine that turns the loop
    less often.) A body that blocked its loop is released after JOIN_TIMEOUT, and fails."""
    ticker = Ticker(turns)
    turned: list[bool] = []

    def release_once_turned() -> None:
        turned.append(ticker.turned.wait(JOIN_TIMEOUT))
        release()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker.run)
        releaser = start_thread(release_once_turned)
        with anyio.fail_after(2 * JOIN_TIMEOUT):
            await body()
        tasks.cancel_scope.cancel()
    releaser.join(JOIN_TIMEOUT)
    assert turned == [True], "the loop stood still while the task waited"


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
        got.append(await lock.async_acquire())

    # the loop turns while the task waits for a thread's release
    await _while_the_loop_turns(body, lock.release)
    assert got == [True]
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

    woken_before_set: list[list[int]] = []

    def set_it() -> None:
        woken_before_set.append(list(woken))
        event.set()

    await _while_the_loop_turns(body, set_it, turns=5)
    assert woken_before_set == [[]]
    assert sorted(woken) == list(range(5))


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
        assert await _serve_alternately(lock) == ALTERNATE
        assert _is_free(lock)


async def _serve_alternately(lock: Any, lot: Any = None) -> list[str]:
    """Queue tasks and threads in turn behind a held *lock* (its parking lot: *lot*, or its
    own), release it: who got it, in order."""
    lot = lock._lot if lot is None else lot
    lock.acquire()
    order: list[str] = []

    def thread(name: str) -> None:
        with lock:
            order.append(name)

    async def task(name: str) -> None:
        async with lock:
            order.append(name)

    async def release() -> None:
        lock.release()

    await _queue_alternately(lot, thread, task, release)
    return order


ALTERNATE = ["task0", "thread1", "task2", "thread3", "task4", "thread5"]


async def _queue_alternately(
    lot: Any,
    thread: Callable[[str], object],
    task: Callable[[str], Awaitable[object]],
    then: Callable[[], Awaitable[object]],
) -> None:
    """Start ``task(name)`` and ``thread(name)`` in turn (names as in ALTERNATE), each queued
    in *lot* before the next comes, then ``await then()``; return once all have ended."""
    threads = []
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for i, name in enumerate(ALTERNATE):
                if i % 2:
                    threads.append(start_thread(lambda name=name: thread(name)))
                else:
                    tasks.start_soon(task, name)
                while len(lot) <= i:  # queued before the next one comes
                    await anyio.sleep(0.001)
            await then()
    for worker in threads:
        worker.join(JOIN_TIMEOUT)


@lock_kinds
async def test_cancelled_waits_leave_nothing_taken(
    dualmode_parallel_backend: str, build: Any
) -> None:
    """Cancel a waiting task at random moments around a thread's release, so that the
    cancellation races the hand-over: afterwards the lock is free, or held by the task that
    got it, and the next caller succeeds: 1,000 trials per event loop and backend."""
    lock = build(dualmode_parallel_backend)
    trials = 1000
    race = RaceWindow(1, "acquired", "cancelled")
    for _ in range(trials):
        lock.acquire()
        releaser = threading.Timer(race.delay(), lock.release)
        acquired = False
        with anyio.move_on_after(race.delay()):
            releaser.start()
            acquired = await lock.async_acquire()
        releaser.join(JOIN_TIMEOUT)
        if acquired:
            lock.release()
        race.record("acquired" if acquired else "cancelled")
        with anyio.fail_after(JOIN_TIMEOUT):
            assert await lock.async_acquire()  # the next caller succeeds
        lock.release()
    # processes: a cancelled wait's slice still in flight may take it for an instant before
    # giving it back (dualmode/off_loop.py)
    wait_until(lambda: _is_free(lock), timeout=5)
    race.assert_both_sides_hit()


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
    _asyncio_only(anyio_backend)
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
        indices.append(barrier.wait())

    def late_parties() -> None:  # the tasks wait meanwhile, and the loop turns
        for worker in [start_thread(late_party) for _ in range(2)]:
            worker.join(JOIN_TIMEOUT)

    async def party() -> None:
        indices.append(await barrier.async_wait())

    async def body() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(tasks_n):
                tasks.start_soon(party)

    await _while_the_loop_turns(body, late_parties, turns=5)
    assert sorted(indices) == list(range(tasks_n + 2))


async def test_a_cancelled_barrier_wait_breaks_the_barrier(dualmode_parallel_backend: str) -> None:
    """1,000 trials: a task waits with a thread that comes at a random moment, and is
    cancelled at another. Either both passed, or the barrier is broken for the thread too
    (no party waits for one that left); after reset() the next wait succeeds."""
    barrier = dm.Barrier(2, backend=dualmode_parallel_backend)
    race = RaceWindow(4, "passed", "broken")
    for _ in range(1000):
        thread_got: list[object] = []

        def thread_party(got: list[object]) -> None:
            try:
                got.append(barrier.wait(timeout=JOIN_TIMEOUT))
            except threading.BrokenBarrierError as exc:
                got.append(exc)

        arrival = threading.Timer(race.delay(), thread_party, (thread_got,))
        passed = False
        with anyio.move_on_after(race.delay()):
            arrival.start()
            await barrier.async_wait()
            passed = True
        arrival.join(JOIN_TIMEOUT)
        assert thread_got
        if passed:
            assert isinstance(thread_got[0], int)
            race.record("passed")
        elif isinstance(thread_got[0], int):
            race.record("passed")  # both had met just as the cancellation came
        else:
            assert barrier.broken
            race.record("broken")
        barrier.reset()
    race.assert_both_sides_hit()
    both = [start_thread(barrier.wait) for _ in range(1)]
    with anyio.fail_after(JOIN_TIMEOUT):
        assert await barrier.async_wait() in (0, 1)
    both[0].join(JOIN_TIMEOUT)


# -- RLock: owned by a thread or a task ------------------------------------------------------


async def test_rlock_reenters_for_its_task_across_awaits(dualmode_backend: str) -> None:
    rlock = dm.RLock(backend=dualmode_backend)
    async with rlock:
        await anyio.sleep(0)
        async with rlock:
            await anyio.sleep(0)
            assert await rlock.async_acquire(timeout=0) is True
            with rlock:  # a sync acquire from the owning task re-enters too
                pass
            rlock.release()
        assert await _free_in_another_task(rlock) is False
    assert await _free_in_another_task(rlock) is True
    assert rlock.acquire(False)
    rlock.release()


async def _free_in_another_task(rlock: Any) -> bool:
    """Whether another task of this loop can take *rlock* without waiting (serial: the
    refusal is False at once, as with a timeout)."""
    got: list[bool] = []

    async def other() -> None:
        taken = await rlock.async_acquire(timeout=0)
        if taken:
            rlock.release()
        got.append(taken)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other)
    return got[0]


async def test_rlock_another_task_waits_for_the_owner(dualmode_parallel_backend: str) -> None:
    rlock = dm.RLock(backend=dualmode_parallel_backend)
    order: list[str] = []

    async def other() -> None:
        async with rlock:
            order.append("other")

    async with anyio.create_task_group() as tasks, rlock:
        tasks.start_soon(other)
        await anyio.sleep(0.1)  # the other task waits, and the loop turns
        order.append("owner")
    assert order == ["owner", "other"]


async def test_serial_rlock_held_by_another_task_raises_borrow_error() -> None:
    rlock = dm.RLock(backend="serial")
    errors: list[BaseException] = []

    async def other() -> None:
        try:
            await rlock.async_acquire()
        except dm.BorrowError as exc:
            errors.append(exc)
        assert await rlock.async_acquire(timeout=1) is False  # at once: no one could release
        assert rlock.acquire(False) is False
        with pytest.raises(RuntimeError, match="un-acquired"):
            rlock.release()

    async with rlock, anyio.create_task_group() as tasks:
        tasks.start_soon(other)
    assert errors and "another task holds" in str(errors[0])
    assert await rlock.async_acquire() is True
    rlock.release()


async def test_rlock_bad_timeouts(dualmode_backend: str) -> None:
    rlock = dm.RLock(backend=dualmode_backend)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await rlock.async_acquire(timeout=-1)
    async with rlock:
        with pytest.raises(ValueError, match=">= 0 seconds"):  # even when it would re-enter
            await rlock.async_acquire(timeout=-1)
    assert await _free_in_another_task(rlock)


async def test_rlock_threads_and_tasks_contend(dualmode_parallel_backend: str) -> None:
    rlock = dm.RLock(backend=dualmode_parallel_backend)
    # A thread holds it: the task waits, and the loop turns.
    rlock_held = threading.Event()
    let_go = threading.Event()

    def holder() -> None:
        with rlock, rlock:
            rlock_held.set()
            let_go.wait(JOIN_TIMEOUT)

    worker = start_thread(holder)
    rlock_held.wait(JOIN_TIMEOUT)
    assert await rlock.async_acquire(timeout=0.05) is False
    with pytest.raises(RuntimeError, match="un-acquired"):
        rlock.release()  # not the owner

    async def body() -> None:
        assert await rlock.async_acquire() is True

    await _while_the_loop_turns(body, let_go.set)
    worker.join(JOIN_TIMEOUT)
    # The task holds it: a thread waits, and cannot release it.
    assert not in_thread(rlock.acquire, False)
    with pytest.raises(RuntimeError, match="un-acquired"):
        in_thread(rlock.release)
    done = threading.Event()
    waiter = start_thread(lambda: (rlock.acquire(), rlock.release(), done.set()))
    await anyio.sleep(0.05)
    assert not done.is_set()
    rlock.release()
    with anyio.fail_after(JOIN_TIMEOUT):
        while not done.is_set():
            await anyio.sleep(0.005)
    waiter.join(JOIN_TIMEOUT)
    assert in_thread(_is_free, rlock)


async def test_threads_rlock_serves_threads_and_tasks_in_order() -> None:
    rlock = dm.RLock(backend="threads")
    lot = rlock._lock._lot  # type: ignore[attr-defined]
    assert await _serve_alternately(rlock, lot) == ALTERNATE
    assert in_thread(_is_free, rlock)


async def test_rlock_excludes_tasks_of_one_loop_and_threads(
    dualmode_parallel_backend: str, switch_often: None
) -> None:
    """Threads and tasks of one loop add to a counter under the RLock, held twice, with a
    read-await-write in the tasks' blocks: no update is lost, so no two tasks (of one thread)
    were ever inside together, nor a task and a thread."""
    rlock = dm.RLock(backend=dualmode_parallel_backend)
    rounds = 200 if dualmode_parallel_backend == "threads" else 40
    total = [0]

    def thread() -> None:
        for _ in range(rounds):
            with rlock, rlock:
                seen = total[0]
                time.sleep(0)
                total[0] = seen + 1

    async def task() -> None:
        for _ in range(rounds):
            async with rlock, rlock:
                seen = total[0]
                await anyio.sleep(0)  # another task runs meanwhile, and must wait
                total[0] = seen + 1

    threads = [start_thread(thread) for _ in range(2)]
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for _ in range(4):
                tasks.start_soon(task)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert total[0] == 6 * rounds
    assert in_thread(_is_free, rlock)


async def test_rlock_cancelled_waits_leave_nothing_taken(dualmode_parallel_backend: str) -> None:
    """1,000 trials: a thread holds the RLock (twice) and lets go at a random moment; the task
    waiting for it is cancelled at another. Afterwards it is free for everyone, and the next
    caller succeeds."""
    rlock = dm.RLock(backend=dualmode_parallel_backend)
    race = RaceWindow(5, "acquired", "cancelled")
    for _ in range(1000):
        held = threading.Event()
        delay = race.delay()

        def holder(delay: float = delay, held: threading.Event = held) -> None:
            with rlock, rlock:
                held.set()
                time.sleep(delay)

        worker = start_thread(holder)
        held.wait(JOIN_TIMEOUT)
        acquired = False
        with anyio.move_on_after(race.delay()):
            acquired = await rlock.async_acquire()
        worker.join(JOIN_TIMEOUT)
        if acquired:
            rlock.release()
        race.record("acquired" if acquired else "cancelled")
        with anyio.fail_after(JOIN_TIMEOUT):
            assert await rlock.async_acquire()  # the next caller succeeds
        rlock.release()
    # processes: a slice in flight may hold it for an instant before giving it back.
    wait_until(lambda: in_thread(_is_free, rlock), timeout=5)
    race.assert_both_sides_hit()


async def test_asyncio_task_cancel_leaves_the_rlock_free(
    anyio_backend: str, dualmode_parallel_backend: str
) -> None:
    _asyncio_only(anyio_backend)
    rlock = dm.RLock(backend=dualmode_parallel_backend)
    let_go = threading.Event()
    held = threading.Event()
    worker = start_thread(lambda: (rlock.acquire(), held.set(), let_go.wait(), rlock.release()))
    held.wait(JOIN_TIMEOUT)
    waiting = asyncio.ensure_future(rlock.async_acquire())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    let_go.set()
    worker.join(JOIN_TIMEOUT)
    wait_until(lambda: in_thread(_is_free, rlock), timeout=5)


# -- Condition ---------------------------------------------------------------------------------


async def test_condition_async_wait_times_out_holding_the_lock(dualmode_backend: str) -> None:
    cond = dm.Condition(backend=dualmode_backend)
    async with cond:
        started = time.monotonic()
        assert await cond.async_wait(timeout=0.05) is False
        elapsed = time.monotonic() - started
        assert elapsed < 0.05 if dualmode_backend == "serial" else elapsed >= 0.04
        assert await cond.async_wait_for(lambda: 0, timeout=0.01) == 0
        assert await cond.async_wait_for(lambda: "ready") == "ready"  # true: no wait
        assert await _free_in_another_task(cond) is False  # held again
    assert await _free_in_another_task(cond) is True


async def test_condition_async_wait_keeps_every_level_of_its_rlock(dualmode_backend: str) -> None:
    cond = dm.Condition(backend=dualmode_backend)
    async with cond, cond:
        assert await cond.async_wait(timeout=0.01) is False  # let go of both levels, took both
        cond.release()
        assert await _free_in_another_task(cond) is False  # one level left
        assert await cond.async_acquire()
    assert await _free_in_another_task(cond) is True


async def test_condition_async_wait_needs_the_lock(dualmode_backend: str) -> None:
    cond = dm.Condition(backend=dualmode_backend)
    with pytest.raises(RuntimeError, match="un-acquired"):
        await cond.async_wait(timeout=0.01)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await cond.async_wait(timeout=-1)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await cond.async_wait_for(lambda: False, timeout=-1)


async def test_serial_condition_waits_no_one_could_end() -> None:
    for lock in (None, dm.Lock(backend="serial"), dm.RLock(backend="serial")):
        cond = dm.Condition(lock, backend="serial")
        async with cond:
            with pytest.raises(dm.BorrowError, match="would block forever"):
                await cond.async_wait()
            with pytest.raises(dm.BorrowError, match="would block forever"):
                await cond.async_wait_for(lambda: False)
            assert await cond.async_wait(timeout=5) is False  # at once
            assert await cond.async_wait_for(lambda: [], timeout=5) == []


async def test_condition_over_a_lock_of_its_backend(dualmode_backend: str) -> None:
    lock = dm.Lock(backend=dualmode_backend)
    cond = dm.Condition(lock, backend=dualmode_backend)
    async with cond:
        assert lock.locked()
        assert await cond.async_wait(timeout=0) is False
        assert lock.locked()
    assert not lock.locked()


async def test_threads_condition_over_a_threading_lock_refuses_tasks() -> None:
    cond = dm.Condition(threading.Lock(), backend="threads")
    with pytest.raises(TypeError, match="blocking its event loop"):
        async with cond:
            pass
    with cond, pytest.raises(TypeError, match="blocking its event loop"):
        await cond.async_wait(timeout=0)
    assert cond.acquire(False)  # its lock is free: nothing was taken
    cond.release()


async def test_notify_wakes_threads_and_tasks(dualmode_parallel_backend: str) -> None:
    """notify_all from a thread wakes waiting tasks and threads; notify(1) from a task wakes
    the first waiter; every waiter holds the lock when it returns."""
    cond = dm.Condition(backend=dualmode_parallel_backend)
    ready: list[str] = []
    woken: list[str] = []

    def thread_waiter(name: str) -> None:
        with cond:
            ready.append(name)
            assert cond.wait_for(lambda: woken.count("go") > 0, timeout=JOIN_TIMEOUT)
            woken.append(name)

    async def task_waiter(name: str) -> None:
        async with cond:
            ready.append(name)
            assert await cond.async_wait_for(lambda: "go" in woken, timeout=JOIN_TIMEOUT)
            woken.append(name)

    threads = [start_thread(lambda i=i: thread_waiter(f"thread{i}")) for i in range(2)]
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for i in range(2):
                tasks.start_soon(task_waiter, f"task{i}")
            while len(ready) < 4:
                await anyio.sleep(0.005)

            def go() -> None:
                with cond:
                    woken.append("go")
                    cond.notify_all()

            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(go)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert sorted(woken) == ["go", "task0", "task1", "thread0", "thread1"]

    # A task notifies a waiting thread.
    got: list[bool] = []
    waiting = threading.Event()

    def one_thread() -> None:
        with cond:
            waiting.set()
            got.append(cond.wait(JOIN_TIMEOUT))

    worker = start_thread(one_thread)
    with anyio.fail_after(JOIN_TIMEOUT):
        while not waiting.is_set():
            await anyio.sleep(0.005)
        async with cond:  # the thread is waiting once it let go of the lock
            cond.notify()
    worker.join(JOIN_TIMEOUT)
    assert got == [True]


async def test_threads_condition_notifies_threads_and_tasks_in_order() -> None:
    cond = dm.Condition(backend="threads")
    order: list[str] = []

    def thread(name: str) -> None:
        with cond:
            assert cond.wait(JOIN_TIMEOUT)
            order.append(name)

    async def task(name: str) -> None:
        async with cond:
            assert await cond.async_wait(JOIN_TIMEOUT)
            order.append(name)

    async def notify_one_by_one() -> None:  # each notification goes to the first waiter
        for i in range(len(ALTERNATE)):
            async with cond:
                cond.notify()
            while len(order) <= i:
                await anyio.sleep(0.001)

    await _queue_alternately(cond._lot, thread, task, notify_one_by_one)  # type: ignore[attr-defined]
    assert order == ALTERNATE


async def test_a_task_waiting_on_a_condition_does_not_block_its_loop(
    dualmode_parallel_backend: str,
) -> None:
    cond = dm.Condition(backend=dualmode_parallel_backend)
    got: list[bool] = []

    def notify() -> None:
        with cond:  # once the task waits, which lets go of the lock
            cond.notify()

    async def body() -> None:
        async with cond:
            got.append(await cond.async_wait())

    await _while_the_loop_turns(body, notify)
    assert got == [True]


async def test_condition_hands_items_between_threads_and_tasks(
    dualmode_parallel_backend: str, switch_often: None
) -> None:
    """Producer threads and producer tasks put items under the Condition and notify; consumer
    tasks and a consumer thread wait for them: every item is taken once."""
    cond = dm.Condition(backend=dualmode_parallel_backend)
    n = 300 if dualmode_parallel_backend == "threads" else 60
    items: list[int] = []
    taken: list[int] = []
    done = [False]

    def produce(start: int) -> None:
        for i in range(start, start + n):
            with cond:
                items.append(i)
                cond.notify()

    async def produce_async(start: int) -> None:
        for i in range(start, start + n):
            async with cond:
                items.append(i)
                cond.notify()
            await anyio.sleep(0)

    def consume() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: items or done[0], timeout=JOIN_TIMEOUT)
                if not items:
                    return
                taken.append(items.pop())

    async def consume_async() -> None:
        while True:
            async with cond:
                await cond.async_wait_for(lambda: items or done[0], timeout=JOIN_TIMEOUT)
                if not items:
                    return
                taken.append(items.pop())

    workers = [start_thread(lambda: produce(0)), start_thread(consume)]
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for _ in range(2):
                tasks.start_soon(consume_async)
            await produce_async(n)
            await anyio.to_thread.run_sync(workers[0].join, JOIN_TIMEOUT)
            async with cond:
                done[0] = True
                cond.notify_all()
    workers[1].join(JOIN_TIMEOUT)
    assert sorted(taken) == list(range(2 * n))


async def test_condition_cancelled_waits_retake_the_lock_and_pass_notifications_on(
    dualmode_parallel_backend: str,
) -> None:
    """1,000 trials: task A waits first, thread B second; a thread's ``notify(1)`` at a random
    moment races A's cancellation at another. A holds the lock again whenever it leaves the
    wait; if A did not return notified, B got the one notification (a notification A had
    received when it was cancelled was passed on); the lock is free afterwards."""
    cond = dm.Condition(backend=dualmode_parallel_backend)
    race = RaceWindow(6, "notified", "cancelled", width=0.003)
    for _ in range(1000):
        b_got: list[bool] = []
        b_queued = threading.Event()

        def b(got: list[bool] = b_got, queued: threading.Event = b_queued) -> None:
            with cond:  # A lets go of the lock only once it is queued: B queues after it
                queued.set()
                got.append(cond.wait(10))

        def notify_one(queued: threading.Event = b_queued) -> None:
            queued.wait(JOIN_TIMEOUT)
            with cond:
                cond.notify(1)

        b_thread = threading.Thread(target=b, daemon=True)
        notifier = threading.Timer(race.delay(), notify_one)
        a_notified = False
        a_held_after = True
        with anyio.move_on_after(race.delay()):
            async with cond:
                b_thread.start()
                notifier.start()
                try:
                    a_notified = await cond.async_wait()
                finally:
                    a_held_after = not in_thread(_is_free, cond)
        assert a_held_after
        if not b_thread.is_alive() and not b_thread.ident:
            b_thread.start()  # A was cancelled before it waited
            notifier.start()
        notifier.join(JOIN_TIMEOUT)
        if a_notified:
            race.record("notified")
            with cond:
                cond.notify()  # B still waits
        else:
            race.record("cancelled")
        b_thread.join(JOIN_TIMEOUT)
        assert b_got == [True]  # B was not left waiting for a notification A swallowed
    if dualmode_parallel_backend == "threads":
        assert len(cond._lot) == 0  # type: ignore[attr-defined]
    assert in_thread(_is_free, cond)
    async with cond:  # the next caller succeeds
        start_thread(lambda: (cond.acquire(), cond.notify(), cond.release()))
        with anyio.fail_after(JOIN_TIMEOUT):
            assert await cond.async_wait()
    race.assert_both_sides_hit()


async def test_asyncio_task_cancel_retakes_the_condition_lock(
    anyio_backend: str, dualmode_parallel_backend: str
) -> None:
    _asyncio_only(anyio_backend)
    cond = dm.Condition(backend=dualmode_parallel_backend)
    after: list[bool] = []

    async def waiter() -> None:
        async with cond:
            try:
                await cond.async_wait()
            finally:
                after.append(in_thread(_is_free, cond))

    waiting = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert after == [False]  # it held the lock again when the cancellation went on
    assert in_thread(_is_free, cond)


# -- FreezeLock ------------------------------------------------------------------------------


async def test_freeze_lock_async_read_and_write(dualmode_backend: str) -> None:
    fl = dm.FreezeLock([1], backend=dualmode_backend)
    assert await fl.async_read() == [1]
    async with fl.async_write() as guard:
        guard.value = [*guard.value, 2]
    guard = await fl.async_write(timeout=1)
    guard.value = [*guard.value, 3]
    guard.release()
    assert await fl.async_read(timeout=0) == [1, 2, 3]
    assert fl.freeze() == [1, 2, 3]
    assert await fl.async_read(timeout=0) == [1, 2, 3]
    with pytest.raises(dm.BorrowError, match="frozen"):
        await fl.async_write()
    with pytest.raises(dm.BorrowError, match="frozen"):
        async with fl.async_write(timeout=0):
            pass
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await fl.async_read(timeout=-1)


async def test_serial_freeze_lock_waits_no_one_could_end() -> None:
    fl = dm.FreezeLock(0, backend="serial")
    with fl.write():
        with pytest.raises(dm.BorrowError, match="write guard lives"):
            await fl.async_read()
        with pytest.raises(dm.BorrowError, match="write guard lives"):
            await fl.async_write()
        with pytest.raises(TimeoutError):
            await fl.async_read(timeout=5)  # at once
        with pytest.raises(TimeoutError):
            await fl.async_write(timeout=5)
    assert await fl.async_read() == 0


async def test_freeze_lock_a_task_waits_for_a_threads_write_guard(
    dualmode_parallel_backend: str,
) -> None:
    fl = dm.FreezeLock(0, backend=dualmode_parallel_backend)
    guard = fl.write()
    with pytest.raises(TimeoutError):
        await fl.async_read(timeout=0.05)
    with pytest.raises(TimeoutError):
        await fl.async_write(timeout=0)

    def finish() -> None:
        guard.value = 1
        guard.release()

    got: list[int] = []

    async def body() -> None:
        got.append(await fl.async_read())
        async with fl.async_write() as written:
            written.value = 2

    await _while_the_loop_turns(body, finish)
    assert got == [1]
    assert fl.read() == 2


async def test_freeze_lock_frozen_while_a_task_waits_to_write(
    dualmode_parallel_backend: str,
) -> None:
    fl = dm.FreezeLock("v", backend=dualmode_parallel_backend)
    guard = fl.write()
    freezer = threading.Timer(0.1, lambda: (guard.release(), fl.freeze()))
    with anyio.fail_after(JOIN_TIMEOUT):
        readers_done = anyio.Event()

        async def reader() -> None:
            assert await fl.async_read() in ("v", "w")  # before or after the writer
            readers_done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            freezer.start()
            # The writer waits behind the guard; by the time it gets the lock, the value may
            # be frozen: then it raises, holding nothing.
            try:
                async with fl.async_write() as written:
                    written.value = "w"
            except dm.BorrowError:
                pass
            await readers_done.wait()
    freezer.join()
    frozen = fl.freeze()
    assert frozen in ("v", "w")
    assert await fl.async_read() == frozen


async def test_freeze_lock_cancelled_waits_leave_nothing_taken(
    dualmode_parallel_backend: str,
) -> None:
    """1,000 trials: a thread holds the write guard and lets it go at a random moment; the
    task waiting to write (or, every other trial, to read) is cancelled at another.
    Afterwards no guard is held and the next writer succeeds."""
    fl = dm.FreezeLock(0, backend=dualmode_parallel_backend)
    race = RaceWindow(7, "done", "cancelled")
    for trial in range(1000):
        guard = fl.write()
        releaser = threading.Timer(race.delay(), guard.release)
        done = False
        with anyio.move_on_after(race.delay()):
            releaser.start()
            if trial % 2:
                await fl.async_read()
            else:
                async with fl.async_write() as written:
                    written.value = trial
            done = True
        releaser.join(JOIN_TIMEOUT)
        race.record("done" if done else "cancelled")
        with anyio.fail_after(JOIN_TIMEOUT):  # the next caller succeeds
            async with fl.async_write(timeout=JOIN_TIMEOUT) as written:
                written.value = -1
    race.assert_both_sides_hit()
    assert fl.freeze() == -1


# -- OnceCell --------------------------------------------------------------------------------


async def test_once_cell_async_get_or_init(dualmode_backend: str) -> None:
    cell = dm.OnceCell(backend=dualmode_backend)

    async def init() -> str:
        await anyio.sleep(0.01)
        return "async"

    assert await cell.async_get_or_init(init) == "async"
    assert await cell.async_get_or_init(lambda: "not run") == "async"
    assert cell.get_or_init(lambda: "not run") == "async"
    sync_cell = dm.OnceCell(backend=dualmode_backend)
    assert await sync_cell.async_get_or_init(lambda: 7, timeout=0) == 7
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await dm.OnceCell(backend=dualmode_backend).async_get_or_init(lambda: 1, timeout=-1)


async def test_once_cell_a_failing_initialiser_leaves_it_empty(dualmode_backend: str) -> None:
    cell = dm.OnceCell(backend=dualmode_backend)

    async def fails() -> int:
        await anyio.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await cell.async_get_or_init(fails)
    with pytest.raises(ZeroDivisionError):
        await cell.async_get_or_init(lambda: 1 // 0)
    assert not cell.is_set()
    assert await cell.async_get_or_init(lambda: 3) == 3


async def test_once_cell_an_initialiser_asking_for_its_own_cell(dualmode_backend: str) -> None:
    cell = dm.OnceCell(backend=dualmode_backend)

    async def reentrant() -> Any:
        return await cell.async_get_or_init(lambda: "inner")

    with pytest.raises(dm.BorrowError):
        await cell.async_get_or_init(reentrant)
    with pytest.raises(dm.BorrowError):
        await cell.async_get_or_init(lambda: cell.get_or_init(lambda: "inner"))
    assert await cell.async_get_or_init(lambda: "outer") == "outer"


async def test_serial_once_cell_another_task_initialising() -> None:
    cell = dm.OnceCell(backend="serial")
    errors: list[BaseException] = []
    release = anyio.Event()

    async def slow() -> str:
        await release.wait()
        return "first"

    async def second() -> None:
        try:
            await cell.async_get_or_init(lambda: "second")
        except dm.BorrowError as exc:
            errors.append(exc)
        with pytest.raises(TimeoutError):
            await cell.async_get_or_init(lambda: "second", timeout=5)  # at once
        release.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cell.async_get_or_init, slow)
        await anyio.sleep(0.01)
        tasks.start_soon(second)
    assert errors and "would block forever" in str(errors[0])
    assert cell.get() == "first"


async def test_once_cell_runs_once_when_threads_and_tasks_race(
    dualmode_parallel_backend: str,
) -> None:
    cell = dm.OnceCell(backend=dualmode_parallel_backend)
    runs = dm.AtomicInt(0, backend=dualmode_parallel_backend)
    got: list[Any] = []

    def init() -> str:
        runs.fetch_add(1)
        time.sleep(0.05)
        return "value"

    async def task_init() -> str:
        runs.fetch_add(1)
        await anyio.sleep(0.05)
        return "value"

    threads = [start_thread(lambda: got.append(cell.get_or_init(init))) for _ in range(3)]

    async def body() -> None:
        async with anyio.create_task_group() as tasks:
            for i in range(6):
                fn = task_init if i % 2 else init

                async def one(fn: Any = fn) -> None:
                    got.append(await cell.async_get_or_init(fn, timeout=JOIN_TIMEOUT))

                tasks.start_soon(one)

    with anyio.fail_after(JOIN_TIMEOUT):
        await body()
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert got == ["value"] * 9
    assert runs.load() == 1


async def test_once_cell_waiters_time_out_and_take_over_a_failed_claim(
    dualmode_parallel_backend: str,
) -> None:
    cell = dm.OnceCell(backend=dualmode_parallel_backend)
    claimed = threading.Event()
    fail = threading.Event()

    def failing() -> str:
        claimed.set()
        fail.wait(JOIN_TIMEOUT)
        raise RuntimeError("initialiser failed")

    def thread() -> None:
        with pytest.raises(RuntimeError, match="initialiser failed"):
            cell.get_or_init(failing)

    worker = start_thread(thread)
    claimed.wait(JOIN_TIMEOUT)
    with pytest.raises(TimeoutError):
        await cell.async_get_or_init(lambda: "task", timeout=0.05)

    async def body() -> None:  # it waits on its loop, then runs its own initialiser
        assert await cell.async_get_or_init(lambda: "task") == "task"

    await _while_the_loop_turns(body, fail.set)
    worker.join(JOIN_TIMEOUT)


async def test_once_cell_cancelled_claims_go_to_the_next_caller(
    dualmode_parallel_backend: str,
) -> None:
    """1,000 trials, each on a new cell: a thread runs an initialiser that fails at a random
    moment; the task, waiting for it and then running its own async initialiser (which takes
    a random while), is cancelled at another. Whether the cancellation came while it waited,
    as the claim was handed to it, or while its initialiser ran, the next caller gets the
    claim and sets the cell."""
    race = RaceWindow(8, "task set it", "cancelled")
    for _ in range(1000):
        cell = dm.OnceCell(backend=dualmode_parallel_backend)
        claimed = threading.Event()
        delay = race.delay()

        def failing(claimed: threading.Event = claimed, delay: float = delay) -> str:
            claimed.set()
            time.sleep(delay)
            raise LookupError

        def thread(cell: Any = cell, failing: Any = failing) -> None:
            with contextlib.suppress(LookupError):
                cell.get_or_init(failing)

        worker = start_thread(thread)
        claimed.wait(JOIN_TIMEOUT)
        run_for = race.delay()

        async def task_init(run_for: float = run_for) -> str:
            await anyio.sleep(run_for)
            return "task"

        with anyio.move_on_after(1.5 * race.delay()):
            await cell.async_get_or_init(task_init)
        worker.join(JOIN_TIMEOUT)
        race.record("task set it" if cell.is_set() else "cancelled")
        with anyio.fail_after(JOIN_TIMEOUT):  # the next caller succeeds
            assert await cell.async_get_or_init(lambda: "next") in ("task", "next")
    race.assert_both_sides_hit()


async def test_asyncio_task_cancel_gives_up_a_once_cell_claim(
    anyio_backend: str, dualmode_backend: str
) -> None:
    _asyncio_only(anyio_backend)
    cell = dm.OnceCell(backend=dualmode_backend)
    started = asyncio.Event()

    async def forever() -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    running = asyncio.ensure_future(cell.async_get_or_init(forever))
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not cell.is_set()
    assert await cell.async_get_or_init(lambda: "next", timeout=JOIN_TIMEOUT) == "next"
