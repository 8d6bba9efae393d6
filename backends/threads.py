"""The threads backend: real locks, atomics and sharded maps, correct with the GIL off.

Every primitive keeps its state in the object behind its own lock (never a global one), so it
is correct on free-threaded CPython 3.13t, where nothing is atomic by grace of the GIL; only
single operations of builtin dicts, lists and deques, which CPython documents as internally
locked there, are relied on. Where ``threading`` has the primitive (Event, Semaphore, Condition,
Barrier...) it is subclassed or wrapped, so behaviour, timeouts and exceptions are exactly
``threading``'s, and CPython's own ``Lib/test/lock_tests.py`` passes against these classes
(tests/test_lock_tests.py): code written for ``threading`` may use them in its place (weak
references, ``Condition`` over a ``threading`` lock, the private methods ``threading`` calls on
its locks). How ``dm.Lock()`` reaches this module is in docs/architecture.md#the-backend-protocol.

The processes backend hosts these classes in its coordinator and calls their public and
backend-protocol methods from one server thread per client thread, so thread identity here
(``OnceCell``'s claim) is that of the caller, and all arguments and results are plain data.
"""

from __future__ import annotations

import _thread
import contextlib
import operator
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, wait
from queue import Empty, Full
from typing import Any, TypeVar, cast

import dualmode.primitives as p
from dualmode.backend import Backend, Outcome, builds, capture, run_chunk
from dualmode.errors import BorrowError, broken_barrier, queue_shut_down
from dualmode.off_loop import NOT_YET, async_timeout, retake_shielded
from dualmode.parking_lot import (
    ParkingLot,
    TaskWaiter,
    ThreadWaiter,
    Waiter,
    current_owner,
    park_task,
    park_thread,
    task_waiter,
)
from dualmode.watchdog import Watchdog

__all__ = [
    "AtomicInt",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "FreezeLock",
    "Lock",
    "Mutex",
    "OnceCell",
    "Queue",
    "RLock",
    "RwLock",
    "Semaphore",
    "ShardedDict",
    "ThreadsBackend",
    "WatchedLock",
    "WorkerLocal",
]

# Enough shards that threads on different keys rarely meet: a power of two >= 4 per CPU.
SHARDS = 1 << max(5, (4 * (os.cpu_count() or 1) - 1).bit_length())


def _wait_timeout(timeout: float) -> float | None:
    """``acquire``'s timeout (-1: forever) as ``Condition.wait_for`` takes it."""
    return None if timeout == -1 else timeout


class _Bound:
    """Gives a primitive its ``backend`` property (the concrete class stores ``_backend``), weak
    references as ``threading``'s objects have, and a repr naming dualmode's class."""

    __slots__ = ("__weakref__",)
    _backend: ThreadsBackend

    @property
    def backend(self) -> ThreadsBackend:
        return self._backend

    def __repr__(self) -> str:
        # threading's repr ("<threading.Event at 0x..: set>", as lock_tests expect) or object's,
        # naming dualmode's class and this backend.
        cls, at = type(self), f" at {id(self):#x}"
        text = (
            super()
            .__repr__()
            .replace(f"{cls.__module__}.{cls.__qualname__}", f"dualmode.{cls.__name__}", 1)
        )
        return text.replace(at, f"{at} on threads", 1)


def _note_creation(obj: _Bound, kind: str | None = None) -> None:
    """Tell the backend's watchdog, if it runs, where *obj* was created (for its reports)."""
    watcher = obj._backend.watcher
    if watcher is not None:
        watcher.created(obj, kind)


class Lock(_Bound, p.Lock):
    """A FIFO lock shared by threads and tasks: acquiring a held lock waits (a task, on its
    event loop) in one queue, and ``release`` hands the lock, still held, to the first waiter.
    Otherwise ``threading.Lock``: any thread or task may release it.

    A caller that finds the lock free takes it at once, even if a waiter is about to be handed
    it (that is the only way to pass a waiter, and is what ``threading.Lock`` always allows).
    """

    __slots__ = ("_backend", "_held", "_lot", "_mutex")

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._held = _thread.allocate_lock()  # held exactly while this Lock is
        self._mutex = _thread.allocate_lock()  # guards the queue and each hand-over
        self._lot = ParkingLot()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout != -1:
            p.check_timeout(blocking, timeout)
        if self._held.acquire(False):
            return True
        if not blocking:
            return False
        waiter = ThreadWaiter()
        if self._queue(waiter):
            return True
        return park_thread(self._mutex, self._lot, waiter, timeout, self)

    def _queue(self, waiter: Waiter) -> bool:
        """Queue *waiter*, unless the lock is free by then: True, and it is taken."""
        with self._mutex:
            self._lot.enqueue(waiter)
            # Tried after queueing: a release that looked at the queue before we joined it
            # has let go of the lock by now.
            if self._held.acquire(False):
                self._lot.withdraw(waiter)
                return True
        return False

    def release(self) -> None:
        if self._lot:
            self._hand_over()
            return
        self._held.release()
        if self._lot:  # a waiter joined as we let go, and may have missed the lock
            with self._mutex:
                # Checked again under the mutex, before taking the lock for it: the waiter
                # may have taken it itself and left the queue (taking it for no one then
                # left it held forever: found by tests/test_stress.py on 3.13t).
                waiter = None
                if self._lot and self._held.acquire(False):
                    waiter = self._lot.grant_first()
            if waiter is not None:
                waiter.wake()

    def _hand_over(self, _waiter: Waiter | None = None) -> None:
        """Give the held lock to the first waiter, or let it go if none is left."""
        with self._mutex:
            if not self._held.locked():
                raise RuntimeError("release unlocked lock")
            waiter = self._lot.grant_first()
            if waiter is None:
                self._held.release()
        if waiter is not None:
            waiter.wake()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        if self._held.acquire(False):
            return True
        return await self._wait_async(limit)

    async def _wait_async(self, limit: float) -> bool:
        waiter = task_waiter()
        if self._queue(waiter):
            return True
        return await park_task(self._mutex, self._lot, waiter, limit, self._hand_over)

    # `with lock:` / `async with lock:` are the hot paths: the free lock taken with no
    # further call (the exits are the public class's: release()).
    def __enter__(self) -> bool:
        return self._held.acquire(False) or self.acquire()

    async def __aenter__(self) -> None:
        if not self._held.acquire(False):
            await self._wait_async(-1)

    def locked(self) -> bool:
        return self._held.locked()

    def _at_fork_reinit(self) -> None:
        # In a forked child only the forking thread exists: no waiter can be woken there.
        self._held = _thread.allocate_lock()
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()

    def __repr__(self) -> str:
        state = "locked" if self._held.locked() else "unlocked"
        return f"<{state} dualmode.Lock object at {id(self):#x} on threads>"


_get_ident = _thread.get_ident


class WatchedLock(Lock):
    """The Lock of a backend whose deadlock watchdog is on: it also records its holder (the
    thread that took it, a task's loop thread for a task), so that a report can say who holds
    what a blocked thread waits for. A subclass, so that with the watchdog off the hot path
    is exactly :class:`Lock`'s. *kind* names it in reports: the RLock or Mutex built on it.
    """

    __slots__ = ("_owner",)

    def __init__(self, backend: ThreadsBackend, /, kind: str = "Lock") -> None:
        super().__init__(backend)
        self._owner: int | None = None
        _note_creation(self, kind)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if super().acquire(blocking, timeout):
            self._owner = _get_ident()
            return True
        return False

    # The hot paths, as Lock's: the free lock taken, and let go, with no further call.
    def __enter__(self) -> bool:
        if self._held.acquire(False):
            self._owner = _get_ident()
            return True
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._owner = None
        Lock.release(self)

    async def async_acquire(self, timeout: float | None = None) -> bool:
        if await super().async_acquire(timeout):
            self._owner = _get_ident()
            return True
        return False

    async def __aenter__(self) -> None:
        await self.async_acquire()

    def release(self) -> None:
        self._owner = None  # before the lock is free: a new holder writes after this
        super().release()

    def _holders(self) -> tuple[object, ...]:
        owner = self._owner
        return () if owner is None else (owner,)


def _lock(backend: ThreadsBackend, kind: str = "Lock") -> Lock:
    """A Lock of *backend*: one that records its holder when the watchdog is on."""
    return Lock(backend) if backend.watcher is None else WatchedLock(backend, kind)


class RLock(_Bound, p.RLock):
    """A reentrant lock owned by a thread or a task (``current_owner``), over this backend's
    FIFO Lock: threads blocked in ``acquire()`` and tasks awaiting ``async_acquire()`` wait
    for it in one queue. Otherwise ``threading.RLock``, private methods included (a
    ``threading.Condition`` may wait on it).

    The ``*_as`` methods take the owner explicitly: the processes backend hosts this class and
    names the owner in each call (None: the calling thread). There one owner, a task of a
    client process, may act from several threads at once (its helper threads, one of them
    giving back what a cancelled wait got), so those methods change the owner and the count
    under a guard of their own.
    """

    __slots__ = ("_backend", "_count", "_guard", "_lock", "_owner")

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._lock = _lock(backend, "RLock")  # held exactly while an owner is
        self._guard = _thread.allocate_lock()  # the *_as methods' owner and count
        # Written only by the owner while it holds _lock: a caller of the public methods,
        # which act for the calling thread or task only, that reads its own token here is
        # the owner (as CPython's RLock reasons), so their read needs no guard.
        self._owner: object = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout != -1:
            p.check_timeout(blocking, timeout)
        owner = current_owner()
        if self._owner == owner:
            self._count += 1
            return True
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner, self._count = owner, 1
        return True

    def __enter__(self) -> bool:
        return self.acquire()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        owner = current_owner()
        if self._owner == owner:
            async_timeout(timeout)  # checked all the same
            self._count += 1
            return True
        if not await self._lock.async_acquire(timeout):
            return False
        # No checkpoint since the grant: a cancellation cannot come between.
        self._owner, self._count = owner, 1
        return True

    async def __aenter__(self) -> None:
        # The uncontended first acquire, with no further await (as Lock's).
        if self._owner is None and self._lock._held.acquire(False):
            self._owner, self._count = current_owner(), 1
        else:
            await self.async_acquire()

    def release(self) -> None:
        self._let_go(current_owner())

    def _let_go(self, owner: object) -> None:
        if self._owner != owner:
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if not self._count:
            self._owner = None
            self._lock.release()

    def _acquire_as(
        self, owner: object, blocking: bool = True, timeout: float = -1, reenter: bool = True
    ) -> bool:
        """``acquire`` for *owner*; with *reenter* False, it waits for the lock even if
        *owner* holds it (a processes task's wait in slices: a slice of a cancelled wait that
        still holds the lock for it is about to give it back)."""
        if timeout != -1:
            p.check_timeout(blocking, timeout)
        if owner is None:
            owner = _thread.get_ident()
        with self._guard:
            if reenter and self._owner == owner:
                self._count += 1
                return True
        if not self._lock.acquire(blocking, timeout):
            return False
        with self._guard:
            self._owner, self._count = owner, 1
        return True

    def _release_as(self, owner: object) -> None:
        if owner is None:
            owner = _thread.get_ident()
        with self._guard:
            self._let_go(owner)

    # What a Condition waiting on this lock does, for an explicit owner.
    def _owned_by(self, owner: object) -> bool:
        with self._guard:
            return bool(self._count) and self._owner == owner

    def _release_all_as(self, owner: object) -> int:
        """Release every level the owner holds; the count, for ``_restore_as``."""
        with self._guard:
            if not (self._count and self._owner == owner):
                raise RuntimeError("cannot release un-acquired lock")
            count, self._count, self._owner = self._count, 0, None
            self._lock.release()
        return count

    def _restore_as(self, owner: object, count: int) -> None:
        self._lock.acquire()
        with self._guard:
            self._owner, self._count = owner, count

    async def _async_restore_as(self, owner: object, count: int) -> None:
        while not await self._lock.async_acquire():
            pass  # no timeout: it returns True
        with self._guard:
            self._owner, self._count = owner, count

    # threading.RLock's private methods (threading.Condition, lock_tests).
    def _is_owned(self) -> bool:
        return self._owned_by(current_owner())

    def _recursion_count(self) -> int:
        return self._count if self._is_owned() else 0

    def _release_save(self) -> tuple[int, object]:
        owner = current_owner()
        return self._release_all_as(owner), owner

    def _acquire_restore(self, state: tuple[int, object], /) -> None:
        count, owner = state
        self._restore_as(owner, count)

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._owner, self._count = None, 0

    def __repr__(self) -> str:
        owner, count = self._owner, self._count
        state = "locked" if count else "unlocked"
        shown = owner if isinstance(owner, int | None) else type(owner).__name__
        return (
            f"<{state} dualmode.RLock object owner={shown or 0} count={count} "
            f"at {id(self):#x} on threads>"
        )


class Semaphore(_Bound, p.Semaphore):
    """``threading.Semaphore``, shared by threads and tasks: acquiring at zero waits (a task,
    on its event loop) in one FIFO queue, and ``release`` hands each unit to the first waiter."""

    __slots__ = ("_backend", "_lot", "_mutex", "_value")

    def __init__(self, backend: ThreadsBackend, /, value: int = 1) -> None:
        self._backend = backend
        self._value = value  # units nobody holds; while anyone waits, 0
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()
        _note_creation(self)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        waits = blocking and (timeout is None or timeout > 0)  # threading: <= 0 waits not
        waiter = self._take_or_queue(ThreadWaiter if waits else None)
        if waiter is None:
            return True
        if waiter is False:
            return False
        limit = -1 if timeout is None else timeout
        return park_thread(self._mutex, self._lot, waiter, limit, self)

    def _take_or_queue(self, make: Callable[[], Waiter] | None) -> Any:
        """Take a unit: None; else queue ``make()`` and return it, or False if *make* is None."""
        with self._mutex:
            if self._value:
                self._value -= 1
                return None
            if make is None:
                return False
            waiter = make()
            self._lot.enqueue(waiter)
            return waiter

    def release(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n must be one or more")
        with self._mutex:
            self._check_release(n)
            self._value += n
            woken = []
            while self._value and self._lot:
                self._value -= 1
                woken.append(self._lot.grant_first())
        for waiter in woken:
            cast("Waiter", waiter).wake()

    def _check_release(self, n: int) -> None:
        """BoundedSemaphore's bound (mutex held)."""

    def _give_back(self, _waiter: Waiter) -> None:
        self.release()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        waiter = self._take_or_queue(task_waiter if limit != 0 else None)
        if waiter is None:
            return True
        if waiter is False:
            return False
        return await park_task(self._mutex, self._lot, waiter, limit, self._give_back)

    def __repr__(self) -> str:
        return f"<dualmode.{type(self).__name__} at {id(self):#x} on threads: {self._shown()}>"

    def _shown(self) -> str:
        return f"value={self._value}"


class BoundedSemaphore(Semaphore, p.BoundedSemaphore):
    """``threading.BoundedSemaphore``: releasing past the initial value raises ValueError."""

    __slots__ = ("_initial",)

    def __init__(self, backend: ThreadsBackend, /, value: int = 1) -> None:
        super().__init__(backend, value)
        self._initial = value

    def _check_release(self, n: int) -> None:
        # Units handed to waiters are held, so free units plus n must stay within the bound.
        if self._value + n > self._initial:
            raise ValueError("Semaphore released too many times")

    def _shown(self) -> str:
        return f"value={self._value}/{self._initial}"


class Event(_Bound, p.Event):
    """``threading.Event``, shared by threads and tasks: ``set`` wakes every waiter, each
    thread on its lock and each task on its event loop."""

    __slots__ = ("_backend", "_flag", "_lot", "_mutex")

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._flag = False
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()
        _note_creation(self)

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._mutex:
            self._flag = True
            woken = self._lot.grant_all()
        for waiter in woken:
            waiter.wake()

    def clear(self) -> None:
        with self._mutex:
            self._flag = False

    def _queue(self, make: Callable[[], Waiter]) -> Waiter | None:
        """Queue ``make()`` and return it, unless the flag is set: None."""
        with self._mutex:
            if self._flag:
                return None
            waiter = make()
            self._lot.enqueue(waiter)
            return waiter

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter = self._queue(ThreadWaiter)
        if waiter is None:
            return True
        limit = -1 if timeout is None else timeout
        return park_thread(self._mutex, self._lot, cast("ThreadWaiter", waiter), limit, self)

    async def async_wait(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        if self._flag:
            return True
        if limit == 0:
            return False
        waiter = self._queue(task_waiter)
        if waiter is None:
            return True
        return await park_task(
            self._mutex, self._lot, cast("TaskWaiter", waiter), limit, _nothing_to_give_back
        )

    def _at_fork_reinit(self) -> None:
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()

    def __repr__(self) -> str:
        state = "set" if self._flag else "unset"
        return f"<dualmode.Event at {id(self):#x} on threads: {state}>"


def _nothing_to_give_back(_waiter: Waiter) -> None:
    """An Event's wake-up takes nothing that another waiter would need."""


def _condition_lock(backend: ThreadsBackend, lock: p.AnyLock | None) -> p.AnyLock:
    """The lock a Condition waits on: a new RLock of this backend by default, a threads Lock
    or RLock, or any other lock as it is, as threading accepts (its tasks cannot wait)."""
    if lock is None:
        return RLock(backend)
    if isinstance(lock, p.Primitive) and not isinstance(lock, _Bound):
        backend_name = getattr(getattr(lock, "backend", None), "name", None)
        raise TypeError(
            f"Condition(lock=...) on the threads backend cannot wait on a {type(lock).__qualname__}"
            f" of the {backend_name!r} backend: its waits and wake-ups follow that backend's "
            "rules; create the lock with backend='threads', pass a threading.Lock or "
            "threading.RLock, or omit lock= for a new RLock"
        )
    return lock


_CANCELLED: Any = "cancelled"  # what a processes client's cancelled wait is granted


class Condition(_Bound, p.Condition):
    """``threading.Condition``, shared by threads and tasks: ``wait`` and ``async_wait`` queue
    in one FIFO parking lot, and ``notify(n)`` grants the first *n* waiters, each thread on its
    lock and each task on its event loop. Over a threads RLock (the default) or Lock; a
    ``threading`` lock serves threads only.

    The ``*_as`` methods take the owner of the lock explicitly (see :class:`RLock`): the
    processes backend hosts this class and names the owner in each call.
    """

    __slots__ = ("_backend", "_keyed", "_lock", "_lot", "_mutex")

    def __init__(self, backend: ThreadsBackend, /, lock: p.AnyLock | None = None) -> None:
        self._backend = backend
        self._lock = _condition_lock(backend, lock)
        self._mutex = _thread.allocate_lock()  # guards the parking lot, never held long
        self._lot = ParkingLot()
        self._keyed: dict[Any, tuple[object, ThreadWaiter, Any]] = {}  # processes clients' waits
        _note_creation(self)

    # -- the lock ------------------------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _acquire_as(
        self, owner: object, blocking: bool = True, timeout: float = -1, reenter: bool = True
    ) -> bool:
        lock = self._lock
        if isinstance(lock, RLock):
            return lock._acquire_as(owner, blocking, timeout, reenter)
        return lock.acquire(blocking, timeout)

    def _release_as(self, owner: object) -> None:
        lock = self._lock
        if isinstance(lock, RLock):
            lock._release_as(owner)
        else:
            lock.release()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        lock = self._lock
        if not isinstance(lock, Lock | RLock):
            raise self._no_tasks()
        return await lock.async_acquire(timeout)

    def _no_tasks(self) -> TypeError:
        return TypeError(
            f"this Condition waits on a {type(self._lock).__module__}."
            f"{type(self._lock).__qualname__}, which a task could only take by blocking its "
            "event loop; build it over a dm.Lock or dm.RLock of the threads backend (or with "
            "no lock) to use it from async code"
        )

    def _owned_by(self, owner: object) -> bool:
        lock: Any = self._lock
        if isinstance(lock, RLock):
            return lock._owned_by(owner)
        if isinstance(lock, Lock):  # owned by no one: held is all it can tell
            return lock.locked()
        if hasattr(lock, "_is_owned"):  # a threading RLock: the calling thread
            return bool(lock._is_owned())
        # threading.Condition's test for a lock with no owner: is it held?
        if lock.acquire(False):
            lock.release()
            return False
        return True

    def _release_save_as(self, owner: object) -> Any:
        lock: Any = self._lock
        if isinstance(lock, RLock):
            return lock._release_all_as(owner)
        if hasattr(lock, "_release_save"):
            return lock._release_save()
        lock.release()
        return None

    def _acquire_restore_as(self, owner: object, saved: Any) -> None:
        lock: Any = self._lock
        if isinstance(lock, RLock):
            lock._restore_as(owner, saved)
        elif hasattr(lock, "_acquire_restore"):
            lock._acquire_restore(saved)
        else:
            lock.acquire()

    async def _async_acquire_restore_as(self, owner: object, saved: Any) -> None:
        lock = self._lock
        if isinstance(lock, RLock):
            await lock._async_restore_as(owner, saved)
        else:
            while not await cast("Lock", lock).async_acquire():
                pass  # no timeout: it returns True

    # threading.Condition's private methods (lock_tests use a Condition as an RLock).
    def _is_owned(self) -> bool:
        return self._owned_by(current_owner())

    def _release_save(self) -> Any:
        owner = current_owner()
        return owner, self._release_save_as(owner)

    def _acquire_restore(self, state: Any, /) -> None:
        self._acquire_restore_as(*state)

    def _at_fork_reinit(self) -> None:
        cast("Any", self._lock)._at_fork_reinit()
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()
        self._keyed = {}

    # -- waiting -------------------------------------------------------------------------------

    def _enqueue(self, owner: object, waiter: Waiter) -> Any:
        """Queue *waiter* and let go of the lock: what ``_acquire_restore_as`` takes back."""
        if not self._owned_by(owner):
            raise RuntimeError("cannot wait on un-acquired lock")
        with self._mutex:
            self._lot.enqueue(waiter)
        try:
            return self._release_save_as(owner)
        except BaseException:
            with self._mutex:
                self._lot.withdraw(waiter)
            raise

    def wait(self, timeout: float | None = None) -> bool:
        return self._wait_as(current_owner(), timeout)

    def _wait_as(self, owner: object, timeout: float | None = None) -> bool:
        if owner is None:
            owner = _thread.get_ident()
        waiter = ThreadWaiter()
        return self._park(owner, waiter, self._enqueue(owner, waiter), timeout)

    def _park(self, owner: object, waiter: ThreadWaiter, saved: Any, timeout: float | None) -> bool:
        try:
            # threading: a timeout <= 0 does not block
            limit = -1 if timeout is None else max(timeout, 0)
            notified = park_thread(self._mutex, self._lot, waiter, limit, self)
        finally:
            self._acquire_restore_as(owner, saved)
        return notified and waiter.granted is not _CANCELLED

    # A processes client's task waits in two calls from a helper thread, so that it can be
    # ended by a third (its cancellation) once it is queued, and only then.
    def _begin_wait(self, owner: object, key: Any) -> None:
        """Queue a wait for *owner* under *key* and let go of the lock."""
        waiter = ThreadWaiter()
        saved = self._enqueue(owner, waiter)
        with self._mutex:
            self._keyed[key] = (owner, waiter, saved)

    def _end_wait(self, key: Any, timeout: float | None) -> bool:
        """Wait as ``wait`` does for the wait *key* began; True if it was notified."""
        with self._mutex:
            owner, waiter, saved = self._keyed[key]
        try:
            return self._park(owner, waiter, saved, timeout)
        finally:
            with self._mutex:
                del self._keyed[key]

    def _cancel_wait(self, key: Any) -> None:
        """End the wait of *key* early (its task was cancelled): it returns False, unless it
        was notified already (then the client passes the notification on)."""
        with self._mutex:
            entry = self._keyed.get(key)
            if entry is None or not self._lot.withdraw(entry[1]):
                return
            waiter = entry[1]
            waiter.granted = _CANCELLED
        waiter.wake()

    async def async_wait(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        if not isinstance(self._lock, Lock | RLock):
            raise self._no_tasks()
        owner = current_owner()
        waiter = task_waiter()
        saved = self._enqueue(owner, waiter)
        try:
            return await park_task(self._mutex, self._lot, waiter, limit, self._pass_on)
        finally:
            await retake_shielded(lambda: self._async_acquire_restore_as(owner, saved))

    def _pass_on(self, _waiter: Waiter) -> None:
        """A cancelled task's notification goes to the next waiter."""
        with self._mutex:
            woken = self._lot.grant_first()
        if woken is not None:
            woken.wake()

    def notify(self, n: int = 1) -> None:
        self._notify_as(current_owner(), n)

    def notify_all(self) -> None:
        self._notify_as(current_owner(), -1)

    def _notify_as(self, owner: object, n: int) -> None:
        """Wake the first *n* waiters (-1: all)."""
        if owner is None:
            owner = _thread.get_ident()
        if not self._owned_by(owner):
            raise RuntimeError("cannot notify on un-acquired lock")
        with self._mutex:
            woken = self._lot.grant_all() if n < 0 else self._lot.grant_first_n(n)
        for waiter in woken:
            waiter.wake()

    def __repr__(self) -> str:
        return f"<dualmode.Condition({self._lock!r}, {len(self._lot)}) on threads>"


class Barrier(_Bound, threading.Barrier, p.Barrier):
    """``threading.Barrier``: ``parties`` callers meet; a timeout or abort breaks it."""

    def __init__(
        self,
        backend: ThreadsBackend,
        /,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> None:
        # threading ignores the action's result; its stub just says None.
        super().__init__(parties, cast("Callable[[], None] | None", action), timeout)
        self._backend = backend

    def wait(self, timeout: float | None = None) -> int:
        try:
            return super().wait(timeout)
        except threading.BrokenBarrierError as exc:
            if exc.args:
                raise
            raise broken_barrier() from None  # threading's says nothing


class RwLock(_Bound, p.RwLock):
    """Readers share, a writer excludes all; a waiting writer blocks new readers (no starvation).

    Holds are counted, not owned: like ``threading.Lock``, any thread may release them. The
    thread that took the write lock is recorded all the same, for the watchdog's reports.
    """

    __slots__ = (
        "_backend",
        "_can_read",
        "_can_write",
        "_mutex",
        "_readers",
        "_writer",
        "_writers_waiting",
        "_writing",
    )

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._mutex = threading.Lock()
        self._can_read = threading.Condition(self._mutex)
        self._can_write = threading.Condition(self._mutex)
        self._readers = 0
        self._writing = False
        self._writer: int | None = None
        self._writers_waiting = 0
        _note_creation(self)

    def _holders(self) -> tuple[object, ...]:
        writer = self._writer
        return () if writer is None else (writer,)

    def _wait(self, ready: threading.Condition, test: Callable[[], bool], timeout: float) -> bool:
        """``ready.wait_for(test)`` for at most *timeout* seconds (-1: none), mutex held;
        watched when the watchdog is on and there is no timeout."""
        watcher = self._backend.watcher
        if watcher is None or timeout != -1:
            return ready.wait_for(test, _wait_timeout(timeout))
        woken: list[bool] = []

        def interrupt() -> bool:
            with self._mutex:
                woken.append(True)
                ready.notify_all()
            return True

        record = watcher.waiting(self, interrupt)
        try:
            ready.wait_for(lambda: test() or bool(woken))
        finally:
            watcher.done(record)
        if not test() and record.error is not None:
            raise record.error
        return True

    def _read_ready(self) -> bool:
        return not self._writing and not self._writers_waiting

    def _write_ready(self) -> bool:
        return not self._writing and not self._readers

    def _wake(self) -> None:
        """Hand the lock on after it may have become free (mutex held): writers first."""
        if self._writing:
            return
        if self._writers_waiting:
            if not self._readers:
                self._can_write.notify()
        else:
            self._can_read.notify_all()

    def acquire_read(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        with self._mutex:
            if not self._read_ready():
                if not blocking:
                    return False
                if not self._wait(self._can_read, self._read_ready, timeout):
                    return False
            self._readers += 1
            return True

    def release_read(self) -> None:
        with self._mutex:
            if not self._readers:
                raise RuntimeError("release_read() of an RwLock that no one is reading")
            self._readers -= 1
            if not self._readers:
                self._wake()

    def acquire_write(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        with self._mutex:
            if self._write_ready():
                self._writing = True
                self._writer = _thread.get_ident()
                return True
            if not blocking:
                return False
            self._writers_waiting += 1
            acquired = False
            try:
                acquired = self._wait(self._can_write, self._write_ready, timeout)
            finally:
                self._writers_waiting -= 1
                if acquired:
                    self._writing = True
                    self._writer = _thread.get_ident()
                else:
                    # Readers held back for us may go now, and a wake-up we consumed while
                    # timing out must reach the next writer.
                    self._wake()
            return acquired

    def release_write(self) -> None:
        with self._mutex:
            if not self._writing:
                raise RuntimeError("release_write() of an RwLock that is not write-locked")
            self._writing = False
            self._writer = None
            self._wake()


class Mutex(_Bound, p.Mutex):
    """A value guarded by this backend's Lock: ``lock()`` and ``async_lock()`` wait for the
    holder in its FIFO queue of threads and tasks."""

    __slots__ = ("_backend", "_lock", "_value")

    def __init__(self, backend: ThreadsBackend, /, value: Any = None) -> None:
        self._backend = backend
        self._lock = _lock(backend, "Mutex")
        self._value = value

    def _acquire(self, blocking: bool) -> bool:
        return self._lock.acquire(blocking)

    def _acquire_for(self, seconds: float) -> bool:
        return self._lock.acquire(True, seconds)

    async def _async_acquire(self, timeout: float | None) -> bool:
        return await self._lock.async_acquire(timeout)

    def _release(self) -> None:
        self._lock.release()

    def _load(self) -> Any:
        return self._value

    def _store(self, value: Any) -> None:
        self._value = value


_SET, _CLAIMED = "set", "claimed"  # what a OnceCell grants its waiters


class OnceCell(_Bound, p.OnceCell):
    """Set at most once. While the owner of the claim (a thread or a task) runs its
    initialiser, other callers wait in one FIFO parking lot, threads and tasks alike; a value
    published wakes them all, a claim given up goes to the first of them.

    The ``*_as`` methods take the owner explicitly (see :class:`RLock`): the processes
    backend hosts this class and names the owner in each call; None is the calling thread.
    """

    __slots__ = ("_backend", "_lot", "_mutex", "_owner", "_value")

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._mutex = _thread.allocate_lock()
        self._lot = ParkingLot()  # each waiter's want: its owner token
        self._value: Any = p.MISSING
        self._owner: object = None  # who runs the initialiser (mutex)
        _note_creation(self)

    def _holders(self) -> tuple[object, ...]:
        """Who runs the initialiser, for the watchdog's reports."""
        owner = self._owner
        return () if owner is None else (owner,)

    def get(self, default: Any = None) -> Any:
        value = self._value  # written once, so one read needs no lock
        return default if value is p.MISSING else value

    def set(self, value: Any) -> bool:
        with self._mutex:
            if self._value is not p.MISSING or self._owner is not None:
                return False
            self._value = value
            woken = self._lot.grant_all(_SET)
        for waiter in woken:
            waiter.wake()
        return True

    def _try_claim(self, owner: object, make: Callable[[object], Waiter] | None) -> Any:
        """``(True, value)``, ``(False, None)`` (claimed), or a waiter ``make(owner)``
        queued (None if *make* is None)."""
        with self._mutex:
            if self._value is not p.MISSING:
                return True, self._value
            if self._owner is None:
                self._owner = owner
                return False, None
            if self._owner == owner:
                raise BorrowError(
                    "OnceCell.get_or_init: the initialiser asked for its own cell, which "
                    "would wait for itself forever"
                )
            if make is None:
                return None
            waiter = make(owner)
            self._lot.enqueue(waiter)
            return waiter

    def _granted(self, waiter: Waiter) -> tuple[bool, Any]:
        return (False, None) if waiter.granted == _CLAIMED else (True, self._value)

    def _claim(self) -> tuple[bool, Any]:
        value = self._value
        if value is not p.MISSING:
            return True, value
        got = self._claim_as(None, -1)
        assert got is not None  # no timeout
        return got

    def _claim_as(self, owner: object, timeout: float) -> tuple[bool, Any] | None:
        """``_claim`` for *owner*, waiting at most *timeout* seconds (-1: no limit) for
        another owner's initialiser: None if it did not end."""
        if owner is None:
            owner = current_owner()
        got = self._try_claim(owner, ThreadWaiter if timeout != 0 else None)
        if not isinstance(got, ThreadWaiter):
            return got  # type: ignore[no-any-return]
        if not park_thread(self._mutex, self._lot, got, timeout, self):
            return None
        return self._granted(got)

    async def _async_claim(self, timeout: float | None) -> tuple[bool, Any] | None:
        limit = async_timeout(timeout)
        value = self._value
        if value is not p.MISSING:
            return True, value
        owner = current_owner()
        got = self._try_claim(owner, task_waiter if limit != 0 else None)
        if isinstance(got, TaskWaiter):
            if not await park_task(self._mutex, self._lot, got, limit, self._hand_on):
                return None
            got = self._granted(got)
        if got is None or got[0]:
            return got  # type: ignore[no-any-return]
        return False, owner

    def _hand_on(self, waiter: Waiter) -> None:
        """A cancelled task's claim goes to the next waiter."""
        if waiter.granted == _CLAIMED:
            self._abandon_as(waiter.want)

    def _end_claim(self, owner: object) -> None:
        if owner is None:
            owner = current_owner()
        if self._owner != owner:
            raise RuntimeError("the caller does not hold the OnceCell's initialisation claim")

    def _publish(self, value: Any) -> None:
        self._publish_as(None, value)

    def _publish_as(self, owner: object, value: Any) -> None:
        with self._mutex:
            self._end_claim(owner)
            self._owner = None
            self._value = value
            woken = self._lot.grant_all(_SET)
        for waiter in woken:
            waiter.wake()

    def _abandon(self) -> None:
        self._abandon_as(None)

    def _abandon_as(self, owner: object) -> None:
        with self._mutex:
            self._end_claim(owner)
            # The claim goes to the first waiter, as its owner: the others keep waiting.
            waiter = self._lot.grant_first(_CLAIMED)
            self._owner = None if waiter is None else waiter.want
        if waiter is not None:
            waiter.wake()


class AtomicInt(_Bound, p.AtomicInt):
    """An int behind a per-object lock: every operation is one indivisible step."""

    __slots__ = ("_backend", "_lock", "_value")

    def __init__(self, backend: ThreadsBackend, /, value: int = 0) -> None:
        self._backend = backend
        self._lock = _thread.allocate_lock()
        self._value = value

    def load(self) -> int:
        return self._value  # one read of an immutable int: atomic without the lock

    def store(self, value: int) -> None:
        value = operator.index(value)
        with self._lock:
            self._value = value

    def swap(self, value: int) -> int:
        value = operator.index(value)
        with self._lock:
            old, self._value = self._value, value
        return old

    def fetch_add(self, delta: int) -> int:
        delta = operator.index(delta)
        with self._lock:
            old = self._value
            self._value = old + delta
        return old

    def compare_exchange(self, expected: int, new: int) -> int:
        expected, new = operator.index(expected), operator.index(new)
        with self._lock:
            old = self._value
            if old == expected:
                self._value = new
        return old


_INITIALISING: Any = object()


class WorkerLocal(_Bound, p.WorkerLocal):
    """One value per thread (``threading.local``, so reused thread idents cannot mix them up)."""

    __slots__ = ("_backend", "_local", "_make", "_values")

    def __init__(self, backend: ThreadsBackend, /, factory: Callable[[], Any]) -> None:
        self._backend = backend
        self._make = factory
        self._local = threading.local()
        self._values: list[Any] = []  # first-use order; list.append is atomic

    def get(self) -> Any:
        value = getattr(self._local, "value", p.MISSING)
        if value is _INITIALISING:
            p.raise_factory_reentered()
        if value is p.MISSING:
            self._local.value = _INITIALISING
            try:
                value = self._make()
            except BaseException:
                del self._local.value
                raise
            self._local.value = value
            self._values.append(value)
        return value

    def collect(self) -> list[Any]:
        return self._values.copy()


class ShardedDict(_Bound, p.ShardedDict):
    """Dict shards picked by ``hash(key)``; each operation is one atomic dict call on one shard."""

    __slots__ = ("_backend", "_mask", "_shards")

    def __init__(self, backend: ThreadsBackend, /) -> None:
        self._backend = backend
        self._shards: list[dict[Any, Any]] = [{} for _ in range(SHARDS)]
        self._mask = SHARDS - 1

    def _shard(self, key: Any) -> dict[Any, Any]:
        return self._shards[hash(key) & self._mask]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._shard(key).get(key, default)

    def set(self, key: Any, value: Any) -> None:
        self._shard(key)[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._shard(key).setdefault(key, default)

    def pop(self, key: Any, default: Any = p.MISSING) -> Any:
        shard = self._shard(key)
        return shard.pop(key) if default is p.MISSING else shard.pop(key, default)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def items(self) -> list[tuple[Any, Any]]:
        # copy() is one atomic call; iterating a live shard could see it resized.
        return [item for shard in self._shards for item in shard.copy().items()]

    def __getitem__(self, key: Any) -> Any:
        return self._shard(key)[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._shard(key)


class FreezeLock(_Bound, p.FreezeLock):
    """An RwLock over the value until ``freeze()``; then reads are one attribute load."""

    __slots__ = ("_backend", "_frozen", "_rw", "_value")

    def __init__(self, backend: ThreadsBackend, /, value: Any = None) -> None:
        self._backend = backend
        self._rw = RwLock(backend)
        self._value = value
        # Set once by freeze(): the value in a 1-tuple, so one load gives flag and value.
        self._frozen: tuple[Any] | None = None

    def read(self) -> Any:
        frozen = self._frozen
        if frozen is not None:
            return frozen[0]
        self._rw.acquire_read()
        try:
            return self._value
        finally:
            self._rw.release_read()

    def freeze(self) -> Any:
        frozen = self._frozen
        if frozen is None:
            self._rw.acquire_write()  # waits for a live writer
            try:
                frozen = self._frozen
                if frozen is None:
                    frozen = self._frozen = (self._value,)
            finally:
                self._rw.release_write()
        return frozen[0]

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def _read_for(self, seconds: float) -> Any:
        frozen = self._frozen
        if frozen is not None:
            return frozen[0]
        if not self._rw.acquire_read(True, seconds):
            return NOT_YET
        try:
            return self._value
        finally:
            self._rw.release_read()

    def _acquire_write(self) -> None:
        self._acquire_write_for(-1)

    def _acquire_write_for(self, seconds: float) -> bool:
        if self._frozen is not None:
            p.raise_frozen()
        if not self._rw.acquire_write(True, seconds):
            return False
        if self._frozen is not None:  # frozen while this writer waited
            self._rw.release_write()
            p.raise_frozen()
        return True

    def _release_write(self) -> None:
        self._rw.release_write()

    def _load(self) -> Any:
        return self._value

    def _store(self, value: Any) -> None:
        self._value = value


_ROOM, _SHUT = "room", "shut down"  # what a Queue grants its waiters, or an _Item


class _Item:
    """A Queue's item handed to a waiting getter."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item


class Queue(_Bound, p.Queue):
    """``queue.Queue`` with 3.13's ``shutdown`` on every Python, shared by threads and tasks.

    The items are a deque whose ``append`` and ``popleft`` are atomic (the ``collections``
    docs promise it, free-threaded builds included), so a ``get`` that finds an item and a
    ``put`` into an unbounded queue take no lock: a mutex there made a thread and a task
    handing items to each other on a GIL build four times slower (the two convoy on it). The
    mutex guards the rest: the parking lots of waiting getters, putters and joiners, and the
    room reserved for woken putters. Waiters are served first come, first served: an item put
    while getters wait is handed to the first of them, room made while putters wait is reserved
    for the first putter. A waiter that queues checks again after queueing (and a caller that
    changes the state checks for waiters after changing it), so no wake-up is lost. A caller
    that finds an item (or room) free takes it even if a waiter is about to be handed it: the
    one way to pass a waiter. A getter cancelled after it was handed an item hands it to the
    next getter (or puts it back at the front); a putter cancelled after its reservation passes
    the room on. Putters woken together put their items as they resume.

    ``task_done`` counts on a second deque (one entry per unfinished item), for the same reason.
    """

    __slots__ = (
        "_backend",
        "_getters",
        "_is_shutdown",
        "_items",
        "_joiners",
        "_mutex",
        "_putters",
        "_reserved_room",
        "_unfinished",
        "maxsize",
    )

    def __init__(self, backend: ThreadsBackend, /, maxsize: int = 0) -> None:
        self._backend = backend
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._unfinished: deque[None] = deque()  # its length: items not yet task_done()
        self._mutex = _thread.allocate_lock()
        self._getters = ParkingLot()
        self._putters = ParkingLot()
        self._joiners = ParkingLot()
        self._reserved_room = 0  # places promised to woken putters (mutex)
        self._is_shutdown = False
        _note_creation(self)

    # -- put -----------------------------------------------------------------------------------

    def _push(self, item: Any) -> None:
        self._unfinished.append(None)  # counted first: a task_done() may follow its get
        self._items.append(item)
        if self._getters:
            self._offer_items()

    def _offer_items(self) -> None:
        """Hand items to waiting getters, in order, while both are there."""
        with self._mutex:
            while self._getters and self._items:
                try:
                    item = self._items.popleft()
                except IndexError:  # a get that came took it
                    break
                self._hand(item)
            self._offer_room()

    def _hand(self, item: Any) -> bool:
        """Hand *item* to the first waiting getter (mutex held): False if none waits."""
        waiter = self._getters.grant_first(_Item(item))
        if waiter is None:
            return False
        waiter.wake()
        return True

    def _has_room(self) -> bool:
        return self.maxsize <= 0 or len(self._items) + self._reserved_room < self.maxsize

    def _try_put(self, item: Any, limit: float, make: Callable[[], Waiter]) -> Waiter | None:
        """Put *item* (None), or queue ``make()`` and return it; Full if *limit* is 0."""
        if self.maxsize <= 0 and not self._is_shutdown:
            self._push(item)  # the hot path: an unbounded queue never waits
            return None
        with self._mutex:
            if self._is_shutdown:
                raise queue_shut_down("put")
            if self._has_room():
                waiter = None
            elif limit == 0:
                raise Full
            else:
                waiter = make()
                self._putters.enqueue(waiter)
                if self._has_room():  # a get made room as we queued
                    self._putters.withdraw(waiter)
                    waiter = None
            if waiter is not None:
                return waiter
            # Bounded: pushed under the mutex, so that two puts never both take the last place.
            self._unfinished.append(None)
            self._items.append(item)
        if self._getters:
            self._offer_items()
        return None

    def _finish_put(self, item: Any, waiter: Waiter, granted: bool) -> None:
        with self._mutex:
            if waiter.granted == _ROOM:
                self._reserved_room -= 1
            if self._is_shutdown:
                self._offer_room()
                raise queue_shut_down("put")
            if not granted:
                raise Full
            self._unfinished.append(None)
            self._items.append(item)
        if self._getters:
            self._offer_items()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._is_shutdown:  # queue.Queue's order: before the arguments are checked
            raise queue_shut_down("put")
        limit = self._check_timeout(block, timeout) if self.maxsize > 0 else 0
        waiter = self._try_put(item, limit, ThreadWaiter)
        if waiter is not None:
            granted = park_thread(
                self._mutex, self._putters, cast("ThreadWaiter", waiter), limit, self
            )
            self._finish_put(item, waiter, granted)

    async def async_put(self, item: Any, timeout: float | None = None) -> None:
        limit = async_timeout(timeout) if self.maxsize > 0 else 0
        waiter = self._try_put(item, limit, task_waiter)
        if waiter is not None:
            granted = await park_task(
                self._mutex, self._putters, cast("TaskWaiter", waiter), limit, self._give_back
            )
            self._finish_put(item, waiter, granted)

    # -- get -----------------------------------------------------------------------------------

    def _offer_room(self) -> None:
        """Reserve room for the first waiting putter, if there is room (mutex held)."""
        if self._putters and self._has_room():
            self._reserved_room += 1
            cast("Waiter", self._putters.grant_first(_ROOM)).wake()

    def _taken(self, item: Any) -> Any:
        if self._putters:
            with self._mutex:
                self._offer_room()
        return item

    def _try_get(self, limit: float, make: Callable[[], Waiter]) -> tuple[Waiter | None, Any]:
        """(None, an item), or (a waiter queued by ``make()``, None); Empty if *limit* is 0."""
        try:
            return None, self._taken(self._items.popleft())
        except IndexError:
            pass
        with self._mutex:
            if self._is_shutdown:
                raise queue_shut_down("get")
            if limit == 0:
                raise Empty
            waiter = make()
            self._getters.enqueue(waiter)
            try:  # a put that came as we queued
                item = self._items.popleft()
            except IndexError:
                return waiter, None
            self._getters.withdraw(waiter)
        return None, self._taken(item)

    def _finish_get(self, waiter: Waiter, granted: bool) -> Any:
        if isinstance(waiter.granted, _Item):
            return waiter.granted.item
        try:  # timed out or shut down: a shut-down queue still hands out what it holds
            return self._taken(self._items.popleft())
        except IndexError:
            pass
        if self._is_shutdown:
            raise queue_shut_down("get")
        raise Empty

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._is_shutdown and not self._items:  # queue.Queue's order, as for put
            raise queue_shut_down("get")
        limit = self._check_timeout(block, timeout)
        waiter, item = self._try_get(limit, ThreadWaiter)
        if waiter is None:
            return item
        granted = park_thread(self._mutex, self._getters, cast("ThreadWaiter", waiter), limit, self)
        return self._finish_get(waiter, granted)

    async def async_get(self, timeout: float | None = None) -> Any:
        limit = -1 if timeout is None else async_timeout(timeout)
        waiter, item = self._try_get(limit, task_waiter)
        if waiter is None:
            return item
        granted = await park_task(
            self._mutex, self._getters, cast("TaskWaiter", waiter), limit, self._give_back
        )
        return self._finish_get(waiter, granted)

    def _give_back(self, waiter: Waiter) -> None:
        """A cancelled waiter's item or reserved room goes to the next waiter."""
        with self._mutex:
            if isinstance(waiter.granted, _Item):
                if not self._hand(waiter.granted.item):
                    # May hold one item over maxsize until the next get: better than losing it.
                    self._items.appendleft(waiter.granted.item)
            elif waiter.granted == _ROOM:
                self._reserved_room -= 1
                self._offer_room()

    @staticmethod
    def _check_timeout(block: bool, timeout: float | None) -> float:
        """queue.Queue's rules: a negative timeout is a ValueError even when the call would
        not have to wait. The seconds to wait (-1: no limit; 0: do not)."""
        if not block:
            return 0
        if timeout is None:
            return -1
        if timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return timeout

    # -- the rest ------------------------------------------------------------------------------

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    # queue.Queue's attributes, read-only here.
    @property
    def unfinished_tasks(self) -> int:
        return len(self._unfinished)

    @property
    def is_shutdown(self) -> bool:
        return self._is_shutdown

    def task_done(self) -> None:
        try:
            self._unfinished.pop()
        except IndexError:
            raise ValueError("task_done() called too many times") from None
        if not self._unfinished and self._joiners:
            self._wake_joiners()

    def _wake_joiners(self) -> None:
        with self._mutex:
            if not self._unfinished:
                for waiter in self._joiners.grant_all():
                    waiter.wake()

    def join(self) -> None:
        if not self._unfinished:
            return
        waiter = ThreadWaiter()
        with self._mutex:
            self._joiners.enqueue(waiter)
            if not self._unfinished:  # the last task_done() came as we queued
                self._joiners.withdraw(waiter)
                return
        park_thread(self._mutex, self._joiners, waiter, -1, self)

    def shutdown(self, immediate: bool = False) -> None:
        with self._mutex:
            self._is_shutdown = True
            if immediate:
                # Dropped items count as done, so join() returns (3.13's rule).
                # One by one: a get may take an item meanwhile, and it counts as undone.
                while True:
                    try:
                        self._items.popleft()
                    except IndexError:
                        break
                    with contextlib.suppress(IndexError):  # a task_done() raced us to it
                        self._unfinished.pop()
            # Every waiting caller re-checks: putters raise, getters once the queue is empty.
            for waiter in [*self._getters.grant_all(_SHUT), *self._putters.grant_all(_SHUT)]:
                waiter.wake()
        if not self._unfinished and self._joiners:
            self._wake_joiners()


T = TypeVar("T")
# What a caller of a parallel call waits for, as the watchdog's reports say.
_TASKS = "the tasks of a parallel call it made"
_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class _Pool:
    """Worker threads sharing one task deque, where a worker that waits runs tasks (rayon's way).

    Tasks go to the right of a shared deque. Idle workers take from the left (oldest first);
    a worker waiting inside a task for other tasks (nested ``par_map``, ``join``) takes from
    the right, usually its own newest subtasks, and runs them instead of sleeping, so nesting
    never deadlocks and no thread beyond the pool is ever started. ``broadcast`` tasks go to
    one inbox per worker, so each worker runs its own exactly once.
    """

    def __init__(self, workers: int, watcher: Watchdog | None = None) -> None:
        self._workers = workers
        self._watcher = watcher
        self._idle: set[int] = set()  # workers waiting for a task, for the watchdog (_cond)
        if watcher is not None:
            watcher.idle_threads(self._idle.copy)
            watcher.pool_threads(
                lambda: [t.ident for t in self._threads if t.ident is not None], _TASKS
            )
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[_Task] = deque()
        self._inboxes: list[deque[_Task]] = [deque() for _ in range(workers)]
        self._threads: list[threading.Thread] = []
        self._sleepers = 0  # helping waiters asleep on _cond, woken when a task finishes
        self._closed = False
        self._local = threading.local()  # .index: this pool worker's index

    def _start(self) -> None:
        """Start the worker threads (called with _cond held, once)."""
        for index in range(self._workers):
            thread = threading.Thread(
                target=self._work, args=(index,), name=f"dualmode-threads-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _enqueue(self, queue: deque[_Task], task: _Task, *, wake_all: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("this threads backend is closed; create a new one")
            if not self._threads:
                self._start()
            queue.append(task)
            if wake_all:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; the future gets its return value or its exception."""
        future: Future[T] = Future()
        self._enqueue(self._tasks, (future, fn, args))
        return future

    def broadcast(self, fn: Callable[..., T], *args: Any) -> list[Future[T]]:
        """Queue ``fn(*args)`` once in every worker's inbox; futures in worker order."""
        futures: list[Future[T]] = []
        for inbox in self._inboxes:
            future: Future[T] = Future()
            self._enqueue(inbox, (future, fn, args), wake_all=True)
            futures.append(future)
        return futures

    def _run(self, task: _Task) -> None:
        future, fn, args = task
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller re-raises it
                future.set_exception(exc)
        with self._cond:
            if self._sleepers:
                self._cond.notify_all()

    def _next(self, index: int, newest_first: bool) -> _Task | None:
        """This worker's next task (its inbox first); call with _cond held."""
        inbox = self._inboxes[index]
        if inbox:
            return inbox.popleft()
        if self._tasks:
            return self._tasks.pop() if newest_first else self._tasks.popleft()
        return None

    def _work(self, index: int) -> None:
        self._local.index = index
        while True:
            with self._cond:
                task = self._next(index, newest_first=False)
                while task is None:
                    if self._closed:
                        return
                    self._idle.add(_thread.get_ident())
                    self._cond.wait()
                    self._idle.discard(_thread.get_ident())
                    task = self._next(index, newest_first=False)
            self._run(task)

    def wait(
        self, futures: Iterable[Future[Any]], return_when: str
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        pending = set(futures)
        index: int | None = getattr(self._local, "index", None)
        if index is None:  # not a pool worker: nothing to help with, just block
            record = None if self._watcher is None else self._watcher.waiting(_TASKS, None)
            try:
                done, not_done = wait(pending, return_when=return_when)
            finally:
                if record is not None:
                    self._watcher.done(record)  # type: ignore[union-attr]
            return set(done), set(not_done)
        while True:
            with self._cond:
                done = {f for f in pending if f.done()}
                if done == pending or (done and return_when == FIRST_COMPLETED):
                    return done, pending - done
                task = self._next(index, newest_first=True)
                if task is None:
                    # A finishing task notifies under _cond, after its future is done, so
                    # checking done-ness above while holding _cond cannot miss the wake-up.
                    self._sleepers += 1
                    record = None if self._watcher is None else self._watcher.waiting(_TASKS, None)
                    self._cond.wait()
                    if record is not None:
                        self._watcher.done(record)  # type: ignore[union-attr]
                    self._sleepers -= 1
                    continue
            self._run(task)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join()


class ThreadsBackend(Backend):
    """Work on threads, primitives from :mod:`threading`: truly parallel on 3.13t."""

    name = "threads"
    parallel = True

    # Each factory builds this module's class (docs/architecture.md#the-backend-protocol).
    create_rlock = builds(RLock)
    create_semaphore = builds(Semaphore)
    create_bounded_semaphore = builds(BoundedSemaphore)
    create_event = builds(Event)
    create_condition = builds(Condition)
    create_barrier = builds(Barrier)
    create_rwlock = builds(RwLock)
    create_mutex = builds(Mutex)
    create_once_cell = builds(OnceCell)
    create_atomic_int = builds(AtomicInt)
    create_worker_local = builds(WorkerLocal)
    create_sharded_dict = builds(ShardedDict)
    create_freeze_lock = builds(FreezeLock)
    create_queue = builds(Queue)

    def __init__(self, workers: int | None = None, watchdog: float | None = None) -> None:
        """*watchdog*: see docs/guarantees.md#the-deadlock-watchdog."""
        super().__init__(workers, watchdog)
        if self.watchdog is not None:
            self.watcher = Watchdog(self.watchdog)
        self._pool = _Pool(self.workers, self.watcher)  # its threads start with the first task

    def create_lock(self) -> Lock:
        """A new Lock of this backend (one that records its holder when the watchdog is on)."""
        return _lock(self)

    def _shutdown(self) -> None:
        self._pool.close()
        if self.watcher is not None:
            self.watcher.close()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Outcome]:
        return self._pool.submit(capture, fn, *args)

    def map_chunks(
        self, fn: Callable[[Any], Any], chunks: Sequence[Sequence[Any]]
    ) -> list[Future[list[Outcome]]]:
        return [self._pool.submit(run_chunk, fn, chunk) for chunk in chunks]

    def wait(
        self, futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        return self._pool.wait(futures, return_when)

    def broadcast(self, fn: Callable[[], Any]) -> list[Future[Outcome]]:
        return self._pool.broadcast(capture, fn)
