"""Where threads and tasks wait on a threads-backend primitive, or for futures: one FIFO queue.

A primitive keeps its state behind a mutex of its own (a ``_thread`` lock held for a few lines,
never while anyone waits). A caller that must wait queues a :class:`Waiter` in the primitive's
:class:`ParkingLot` under that mutex, lets go of the mutex, and parks:

- a thread on a lock of its own, as ``threading.Condition``'s waiters do;
- an asyncio task on a future of its loop; a trio task in ``wait_task_rescheduled``.

Whoever changes the state, from any thread or event loop, *grants* waiters under the mutex
(taking them off the queue, in order) and wakes them after letting go of it. A grant is what
the waiter waited for: the lock handed over still held, a permit, a notification. A waiter that
times out or is cancelled *withdraws* under the same mutex, which settles the race with a grant
once: either it is still queued and leaves having taken nothing, or it was granted first and
the grant stands (a timed-out wait then succeeds; a cancelled task gives the grant back through
the primitive's ``give_back`` before the cancellation goes on). So a grant is never lost and
never given twice, and a thread blocked in ``acquire()`` and a task awaiting
``async_acquire()`` are served in the order they queued (docs/async.md#fairness).

A task never blocks its event loop: it parks on the loop's own machinery, and a wake-up from
another thread reaches the loop through its thread-safe entry (``call_soon_threadsafe``, a trio
token's ``run_sync_soon``). Which library runs the task is asked of ``sniffio``, which asyncio
(through anyio) and trio both answer.
"""

from __future__ import annotations

import contextlib
import math
import sys
from _thread import allocate_lock, get_ident
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import sniffio

if TYPE_CHECKING:
    import asyncio
    from _thread import LockType as _RawLock

    from .primitives import Primitive

__all__ = [
    "Latch",
    "ParkingLot",
    "TaskWaiter",
    "ThreadWaiter",
    "Waiter",
    "park_task",
    "park_thread",
    "current_owner",
    "current_task",
    "task_waiter",
    "wait_done",
]


def _no_running_loop() -> None:
    return None


# asyncio's _get_running_loop once asyncio is imported (no loop runs before): dualmode does not
# import asyncio itself, which costs an import of 14 ms to programs that do not use it.
_running_loop: Callable[[], object] = _no_running_loop
_sniffio_local = sniffio.thread_local  # trio names itself here on the threads that run it


def current_task() -> object | None:
    """The asyncio or trio task running on the calling thread, or None outside any task.

    Cheap for plain threads (no exception raised, no import): called on every RLock
    acquire."""
    global _running_loop
    if _running_loop is _no_running_loop and "asyncio" in sys.modules:
        _running_loop = sys.modules["asyncio"].events._get_running_loop
    loop = _running_loop()
    if loop is not None:  # passed on: asking for it again costs a getpid() on 3.11
        task: object | None = sys.modules["asyncio"].current_task(loop)
        return task
    if _sniffio_local.name == "trio":
        import trio

        return trio.lowlevel.current_task()
    return None


def current_owner() -> object:
    """Who holds what the caller takes (an RLock, a OnceCell's claim): the running task, so that
    two tasks of one thread are told apart; else the calling thread's ident."""
    task = current_task()
    return get_ident() if task is None else task


class Waiter:
    """One queued caller. ``want`` says what it waits for, for primitives whose waiters differ
    (a reader or a writer); ``granted`` is False until the grant, under the primitive's mutex,
    sets it to True or to what was granted, for primitives that grant different things (a
    Queue's item or shutdown)."""

    __slots__ = ("granted", "want")

    def __init__(self, want: Any = None) -> None:
        self.want = want
        self.granted: Any = False

    def wake(self) -> None:
        """Resume the granted waiter; from any thread, after the mutex is let go."""
        raise NotImplementedError


class ParkingLot(deque[Waiter]):
    """The queue of a primitive's waiters, in arrival order: a deque, so that ``bool(lot)``,
    which hot paths read without the mutex (a hint, rechecked under it), costs no call. The
    methods below are called with the primitive's mutex held."""

    __slots__ = ()

    def enqueue(self, waiter: Waiter) -> None:
        self.append(waiter)

    def grant_first(self, what: Any = True) -> Waiter | None:
        """Take the first waiter off the queue, granted *what* (truthy); the caller wakes it."""
        if not self:
            return None
        waiter = self.popleft()
        waiter.granted = what
        return waiter

    def grant_first_n(self, n: int, what: Any = True) -> list[Waiter]:
        """Take the first *n* waiters (or all there are) off the queue, granted *what*."""
        waiters = [self.popleft() for _ in range(min(n, len(self)))]
        for waiter in waiters:
            waiter.granted = what
        return waiters

    def grant_all(self, what: Any = True) -> list[Waiter]:
        waiters = list(self)
        self.clear()
        for waiter in waiters:
            waiter.granted = what
        return waiters

    def withdraw(self, waiter: Waiter) -> bool:
        """Take *waiter* off the queue: True if it was not granted (it may have left already),
        False if it was granted."""
        if waiter.granted:
            return False
        with contextlib.suppress(ValueError):  # it left before (a trio abort)
            self.remove(waiter)
        return True


class ThreadWaiter(Waiter):
    """A thread parked on a lock of its own, released by the grant's wake-up."""

    __slots__ = ("_lock",)

    def __init__(self, want: Any = None) -> None:
        super().__init__(want)
        self._lock = allocate_lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()


def park_thread(
    mutex: _RawLock,
    lot: ParkingLot,
    waiter: ThreadWaiter,
    timeout: float,
    on: Primitive | None = None,
) -> bool:
    """Block until *waiter* (queued in *lot*, *mutex* let go) is granted: True; or until
    *timeout* seconds (-1: none) pass with no grant: False, and it is off the queue.

    *on*: the primitive waited for. With no timeout, on a backend whose deadlock watchdog is
    on, the wait is recorded for it, and raises :class:`~dualmode.DeadlockError` (off the
    queue, granted nothing) when the watchdog finds it blocked for good.
    """
    watcher = None if timeout >= 0 or on is None else on.backend.watcher
    if watcher is not None:
        record = watcher.waiting(on, lambda: _withdraw(mutex, lot, waiter))
        try:
            waiter._lock.acquire()
        finally:
            watcher.done(record)
        if not waiter.granted and record.error is not None:
            raise record.error
        return True
    if waiter._lock.acquire(True, timeout):
        return True
    with mutex:
        return not lot.withdraw(waiter)  # granted just as the time ran out: the grant stands


def _withdraw(mutex: _RawLock, lot: ParkingLot, waiter: ThreadWaiter) -> bool:
    """Take a parked thread off the queue and wake it, granted nothing: whether it was still
    waiting (False: it was granted first, and the grant stands)."""
    with mutex:
        if not lot.withdraw(waiter):
            return False
    waiter.wake()
    return True


class TaskWaiter(Waiter):
    """A task parked on its event loop (see :func:`task_waiter`)."""

    __slots__ = ()

    async def park(self, mutex: _RawLock, lot: ParkingLot, timeout: float) -> bool:
        """Wait until granted (True) or *timeout* seconds (-1: none) pass (False)."""
        raise NotImplementedError


class _AsyncioWaiter(TaskWaiter):
    __slots__ = ("_future", "_loop", "_thread")

    def __init__(self, want: Any) -> None:
        import asyncio

        super().__init__(want)
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] = self._loop.create_future()
        self._thread = get_ident()

    def wake(self) -> None:
        if get_ident() == self._thread:
            _resolve(self._future)
        else:
            self._loop.call_soon_threadsafe(_resolve, self._future)

    async def park(self, mutex: _RawLock, lot: ParkingLot, timeout: float) -> bool:
        timer = None
        if timeout >= 0:
            timer = self._loop.call_later(timeout, self._time_out, mutex, lot)
        try:
            await self._future
        finally:
            if timer is not None:
                timer.cancel()
        return bool(self.granted)

    def _time_out(self, mutex: _RawLock, lot: ParkingLot) -> None:
        with mutex:
            withdrawn = lot.withdraw(self)
        if withdrawn:
            _resolve(self._future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled task's future is done already
        future.set_result(None)


class _TrioWaiter(TaskWaiter):
    __slots__ = ("_parked", "_task", "_thread", "_token", "_woken_here")

    def __init__(self, want: Any) -> None:
        import trio

        super().__init__(want)
        self._task = trio.lowlevel.current_task()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = get_ident()
        self._parked = self._woken_here = False

    def wake(self) -> None:
        import trio

        if get_ident() != self._thread:
            # Runs on the trio thread once the task yields, and it yields only in park(),
            # which therefore always waits for it: returning early there would leave this
            # reschedule to wake the task later, in some other wait.
            self._token.run_sync_soon(trio.lowlevel.reschedule, self._task)
        elif self._parked:
            trio.lowlevel.reschedule(self._task)
        else:  # granted on the task's own thread before it parked (a future already done)
            self._woken_here = True

    async def park(self, mutex: _RawLock, lot: ParkingLot, timeout: float) -> bool:
        import trio

        if self._woken_here:
            return True
        self._parked = True

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            with mutex:
                withdrawn = lot.withdraw(self)
            # Not withdrawn: granted, the wake-up is on its way, and the task takes it; the
            # cancellation is delivered at its next checkpoint, as trio does for any operation
            # that completed.
            return trio.lowlevel.Abort.SUCCEEDED if withdrawn else trio.lowlevel.Abort.FAILED

        deadline = math.inf if timeout < 0 else trio.current_time() + timeout
        with trio.CancelScope(deadline=deadline):
            await trio.lowlevel.wait_task_rescheduled(abort)
        return bool(self.granted)


_TASK_WAITERS: dict[str, Callable[[Any], TaskWaiter]] = {
    "asyncio": _AsyncioWaiter,
    "trio": _TrioWaiter,
}


def task_waiter(want: Any = None) -> TaskWaiter:
    """A waiter for the running task, of the event loop that runs it."""
    library = sniffio.current_async_library()
    try:
        make = _TASK_WAITERS[library]
    except KeyError:
        raise RuntimeError(
            f"dualmode's async operations run under asyncio or trio (directly or through "
            f"anyio), not under {library!r}"
        ) from None
    return make(want)


async def park_task(
    mutex: _RawLock,
    lot: ParkingLot,
    waiter: TaskWaiter,
    timeout: float,
    give_back: Callable[[Waiter], None],
) -> bool:
    """Wait, without blocking the loop, until *waiter* (queued in *lot*, *mutex* let go) is
    granted: True; or until *timeout* seconds (-1: none) pass with no grant: False.

    Cancelled while still queued, it leaves the queue and the cancellation goes on. Cancelled
    when the grant had already been made (asyncio: the two raced), it calls *give_back* with
    the waiter, so that what it was granted goes to the next waiter, then re-raises.
    """
    try:
        return await waiter.park(mutex, lot, timeout)
    except BaseException:
        with mutex:
            withdrawn = lot.withdraw(waiter)
        if not withdrawn:
            give_back(waiter)
        raise


class Latch:
    """Opens once (:meth:`set`); threads (:meth:`wait`) and tasks (:meth:`async_wait`) wait
    for it to open, in one queue. The job table's latch: a task awaiting another caller's
    query parks on its event loop, never blocking it."""

    __slots__ = ("_lot", "_mutex", "_open")

    def __init__(self) -> None:
        self._open = False
        self._mutex = allocate_lock()
        self._lot = ParkingLot()

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        """Open it and wake every waiter (from any thread)."""
        with self._mutex:
            self._open = True
            woken = self._lot.grant_all()
        for waiter in woken:
            waiter.wake()

    def queue(self, waiter: Waiter) -> bool:
        """Queue *waiter* unless it is open already: whether it was queued (it is woken,
        granted, when the latch opens)."""
        with self._mutex:
            if self._open:
                return False
            self._lot.enqueue(waiter)
            return True

    def withdraw(self, waiter: Waiter) -> None:
        """Take a queued *waiter* off the queue, if it is still on it."""
        with self._mutex:
            self._lot.withdraw(waiter)

    def wait(self, timeout: float = -1) -> bool:
        """Block until open (True) or *timeout* seconds (-1: none) pass (False)."""
        if self._open:
            return True
        waiter = ThreadWaiter()
        return not self.queue(waiter) or park_thread(self._mutex, self._lot, waiter, timeout)

    async def async_wait(self, timeout: float = -1) -> bool:
        """Wait, without blocking the loop, until open (True) or *timeout* seconds (-1: none)
        pass (False). Cancelled, it leaves the queue."""
        waiter = task_waiter()
        if not self.queue(waiter):
            return True
        return await park_task(self._mutex, self._lot, waiter, timeout, _nothing)


async def wait_done(futures: Sequence[Future[Any]], *, first: bool = False) -> None:
    """Wait, without blocking the loop, until every one of *futures* is done (*first*: until
    one is). The futures' done callbacks, from whichever thread completes them, wake the task.
    Cancelled, it returns nothing and leaves the futures as they are."""
    if not futures:
        return
    mutex = allocate_lock()
    lot = ParkingLot()
    waiter = task_waiter()
    lot.enqueue(waiter)
    left = [len(futures)]

    def done(_future: Future[Any]) -> None:
        with mutex:
            left[0] -= 1
            woken = lot.grant_first() if first or not left[0] else None
        if woken is not None:
            woken.wake()

    for future in futures:
        future.add_done_callback(done)  # at once, here, when it is done already
    await park_task(mutex, lot, waiter, -1, _nothing)


def _nothing(_waiter: Waiter) -> None:
    """A futures wait is granted nothing that another waiter would need."""
