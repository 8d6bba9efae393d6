"""The serial backend: work runs on the calling thread, primitives are borrow flags.

This is rustc's single-threaded mode. Only one thread uses a serial primitive, so a lock is a
flag, a semaphore a counter, an atomic a plain int. An operation that would wait for another
thread (which cannot exist) raises :class:`~dualmode.BorrowError` at once instead of hanging,
and timed waits return their timeout result at once. Using a primitive from a thread other than
the one that created it raises :class:`~dualmode.WrongThreadError` (docs/primitives.md states
both rules for users; how ``dm.Lock()`` reaches this module is in
docs/architecture.md#the-backend-protocol).
"""

from __future__ import annotations

import operator
from _thread import get_ident
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, Future
from queue import Empty, Full
from typing import TYPE_CHECKING, Any, TypeVar

import dualmode.primitives as p
from dualmode.backend import (
    Backend,
    Outcome,
    builds,
    capture,
    check_watchdog,
    run_chunk,
    run_now,
)
from dualmode.errors import BorrowError, WrongThreadError, broken_barrier, queue_shut_down
from dualmode.off_loop import NOT_YET, async_timeout
from dualmode.parking_lot import current_owner

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["SerialBackend"]

T = TypeVar("T")

_EMPTY, _RUNNING, _SET = 0, 1, 2  # OnceCell states


def _would_block(what: str) -> BorrowError:
    return BorrowError(
        f"{what}: on the serial backend no other thread exists to make progress (and no "
        "other task is waited for: serial is one flow of control), so this would block "
        "forever; fix the logic, pass blocking=False or a timeout, or choose a parallel backend"
    )


class _Owned:
    """Remembers the backend and the creating thread; every operation checks the thread.

    Weak references work as on every backend (``threading``'s objects allow them)."""

    __slots__ = ("__weakref__", "_backend", "_owner")

    def __init__(self, backend: SerialBackend, /) -> None:
        self._backend = backend
        self._owner = get_ident()

    @property
    def backend(self) -> SerialBackend:
        return self._backend

    def _check_thread(self) -> None:
        if self._owner != get_ident():
            raise WrongThreadError(
                f"this serial-backend {type(self).__name__} was created by thread "
                f"{self._owner} and used from thread {get_ident()}; create it under a parallel "
                "backend (e.g. backend='threads') to share it between threads"
            )


class Lock(_Owned, p.Lock):
    """A held/free flag: re-acquiring raises BorrowError instead of deadlocking."""

    __slots__ = ("_held",)

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._held = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        self._check_thread()
        if self._held:
            if blocking and timeout == -1:
                raise _would_block("acquiring a Lock that is already held")
            return False
        self._held = True
        return True

    def release(self) -> None:
        self._check_thread()
        if not self._held:
            raise RuntimeError("release unlocked lock")
        self._held = False

    def locked(self) -> bool:
        self._check_thread()
        return self._held

    async def async_acquire(self, timeout: float | None = None) -> bool:
        # No other task could release it either: the serial backend is one flow of control.
        return self.acquire(True, async_timeout(timeout))

    # `with lock:` is the hot path: one combined test, no call unless something is wrong.
    def __enter__(self) -> bool:
        if self._held or self._owner != get_ident():
            return self.acquire()
        self._held = True
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # __enter__ already checked the thread, and a with block exits where it entered.
        self._held = False


class RLock(_Owned, p.RLock):
    """A recursion counter and its owner: the thread, or the task that took it. Acquiring it
    while another task of the thread holds it raises BorrowError (only that task could
    release it) or returns False."""

    __slots__ = ("_count", "_holder")

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._count = 0
        self._holder: object = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        self._check_thread()
        holder = current_owner()
        if self._count and self._holder != holder:
            if blocking and timeout == -1:
                raise _would_block("acquiring an RLock that another task holds")
            return False
        self._holder = holder
        self._count += 1
        return True

    async def async_acquire(self, timeout: float | None = None) -> bool:
        return self.acquire(True, async_timeout(timeout))

    def release(self) -> None:
        self._check_thread()
        if not self._held_here():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1

    def _held_here(self) -> bool:
        """Held by the caller (the thread, or the task that took it)."""
        return bool(self._count) and self._holder == current_owner()


class Semaphore(_Owned, p.Semaphore):
    """A counter: acquiring at zero raises BorrowError (blocking) or returns False."""

    __slots__ = ("_value",)

    def __init__(self, backend: SerialBackend, /, value: int = 1) -> None:
        super().__init__(backend)
        self._value = value

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        self._check_thread()
        if self._value:
            self._value -= 1
            return True
        if blocking and timeout is None:
            raise _would_block(f"acquiring a {type(self).__name__} whose value is 0")
        return False

    def release(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n must be one or more")
        self._check_thread()
        self._value += n

    async def async_acquire(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        return self.acquire(True, None if limit == -1 else limit)


class BoundedSemaphore(Semaphore, p.BoundedSemaphore):
    """A Semaphore that refuses to rise above its initial value."""

    __slots__ = ("_initial",)

    def __init__(self, backend: SerialBackend, /, value: int = 1) -> None:
        super().__init__(backend, value)
        self._initial = value

    def release(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n must be one or more")
        self._check_thread()
        if self._value + n > self._initial:
            raise ValueError("Semaphore released too many times")
        self._value += n


class Event(_Owned, p.Event):
    """A flag: waiting on it unset with no timeout raises BorrowError."""

    __slots__ = ("_flag",)

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._flag = False

    def is_set(self) -> bool:
        self._check_thread()
        return self._flag

    def set(self) -> None:
        self._check_thread()
        self._flag = True

    def clear(self) -> None:
        self._check_thread()
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        self._check_thread()
        if not self._flag and timeout is None:
            raise _would_block("waiting on an Event that is not set")
        return self._flag

    async def async_wait(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        return self.wait(None if limit == -1 else limit)


class Condition(_Owned, p.Condition):
    """wait/notify over a serial Lock or RLock; a wait no thread could end raises BorrowError."""

    __slots__ = ("_lock",)

    def __init__(self, backend: SerialBackend, /, lock: p.AnyLock | None = None) -> None:
        super().__init__(backend)
        if lock is None:
            lock = RLock(backend)
        elif not isinstance(lock, Lock | RLock):
            # Its waits never block, so it must read the lock's borrow flag to tell a wait
            # that no thread could end; a threading lock has none.
            raise TypeError(
                f"Condition(lock=...) on the serial backend needs a Lock or RLock of the serial "
                f"backend, got {type(lock).__module__}.{type(lock).__qualname__}; create the lock "
                "with dm.Lock() or dm.RLock() under the same backend, omit lock= for a new RLock, "
                "or choose backend='threads' to wait on a threading lock"
            )
        self._lock: Lock | RLock = lock

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    async def async_acquire(self, timeout: float | None = None) -> bool:
        return await self._lock.async_acquire(timeout)

    def _check_owned(self, action: str) -> None:
        self._check_thread()
        lock = self._lock
        held = lock._held if isinstance(lock, Lock) else lock._held_here()
        if not held:
            raise RuntimeError(f"cannot {action} on un-acquired lock")

    def wait(self, timeout: float | None = None) -> bool:
        self._check_owned("wait")
        if timeout is None:
            raise _would_block("waiting on a Condition with no timeout")
        return False

    async def async_wait(self, timeout: float | None = None) -> bool:
        limit = async_timeout(timeout)
        return self.wait(None if limit == -1 else limit)

    async def async_wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        limit = async_timeout(timeout)
        return self.wait_for(predicate, None if limit == -1 else limit)

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        result = predicate()
        if not result:
            self.wait(timeout)
        return result

    def notify(self, n: int = 1) -> None:
        self._check_owned("notify")

    def notify_all(self) -> None:
        self._check_owned("notify")


class Barrier(_Owned, p.Barrier):
    """One party can pass alone; waiting for absent parties raises BorrowError or breaks it."""

    __slots__ = ("_action", "_broken", "_parties", "_timeout")

    def __init__(
        self,
        backend: SerialBackend,
        /,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(backend)
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._broken = False

    def wait(self, timeout: float | None = None) -> int:
        self._check_thread()
        if self._broken:
            raise broken_barrier()
        if self._parties > 1:
            if timeout is None:
                timeout = self._timeout
            if timeout is None:
                raise _would_block(f"waiting on a Barrier of {self._parties} parties")
            # threading breaks the barrier when the wait times out; nobody else can arrive.
            self._broken = True
            raise broken_barrier()
        if self._action is not None:
            try:
                self._action()
            except BaseException:
                self._broken = True
                raise
        return 0

    async def async_wait(self, timeout: float | None = None) -> int:
        limit = async_timeout(timeout)
        return self.wait(None if limit == -1 else limit)

    def reset(self) -> None:
        self._check_thread()
        self._broken = False

    def abort(self) -> None:
        self._check_thread()
        self._broken = True

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return 0

    @property
    def broken(self) -> bool:
        self._check_thread()
        return self._broken


class RwLock(_Owned, p.RwLock):
    """A RefCell borrow state: many readers or one writer, else BorrowError."""

    __slots__ = ("_readers", "_writing")

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._readers = 0
        self._writing = False

    def _refuse(self, blocking: bool, timeout: float, what: str) -> bool:
        if blocking and timeout == -1:
            raise _would_block(what)
        return False

    def acquire_read(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        self._check_thread()
        if self._writing:
            return self._refuse(blocking, timeout, "reading an RwLock while it is written")
        self._readers += 1
        return True

    def release_read(self) -> None:
        self._check_thread()
        if not self._readers:
            raise RuntimeError("release_read() without a read hold on this RwLock")
        self._readers -= 1

    def acquire_write(self, blocking: bool = True, timeout: float = -1) -> bool:
        p.check_timeout(blocking, timeout)
        self._check_thread()
        if self._writing or self._readers:
            return self._refuse(blocking, timeout, "writing an RwLock while a guard lives")
        self._writing = True
        return True

    def release_write(self) -> None:
        self._check_thread()
        if not self._writing:
            raise RuntimeError("release_write() without the write hold on this RwLock")
        self._writing = False

    async def _async_acquire(self, how: str, timeout: float | None) -> bool:
        acquire = self.acquire_read if how == "read" else self.acquire_write
        return acquire(True, async_timeout(timeout))


class Mutex(_Owned, p.Mutex):
    """A value and a borrow flag: a second live guard raises BorrowError."""

    __slots__ = ("_held", "_value")

    def __init__(self, backend: SerialBackend, /, value: Any = None) -> None:
        super().__init__(backend)
        self._held = False
        self._value = value

    def _acquire(self, blocking: bool) -> bool:
        self._check_thread()
        if self._held:
            if blocking:
                raise _would_block("locking a Mutex while a guard of it lives")
            return False
        self._held = True
        return True

    def _release(self) -> None:
        self._check_thread()
        if not self._held:
            raise RuntimeError("release of an unlocked Mutex")
        self._held = False

    async def _async_acquire(self, timeout: float | None) -> bool:
        return self._acquire(async_timeout(timeout) == -1)

    def _load(self) -> Any:
        self._check_thread()
        return self._value

    def _store(self, value: Any) -> None:
        self._check_thread()
        self._value = value


class OnceCell(_Owned, p.OnceCell):
    """A slot with an "initialising" flag and who set it (the thread, or a task), so that
    reentrant initialisation raises BorrowError."""

    __slots__ = ("_claimer", "_state", "_value")

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._state = _EMPTY
        self._value: Any = None
        self._claimer: object = None

    def get(self, default: Any = None) -> Any:
        self._check_thread()
        return self._value if self._state == _SET else default

    def set(self, value: Any) -> bool:
        self._check_thread()
        if self._state != _EMPTY:
            return False
        self._state, self._value = _SET, value
        return True

    def _claim(self) -> tuple[bool, Any]:
        got = self._claim_as(current_owner(), True)
        assert got is not None  # it waits for no one
        return got

    def _claim_as(self, owner: object, blocking: bool) -> tuple[bool, Any] | None:
        """``(True, value)``, ``(False, owner)`` claimed; None if another task initialises
        and not *blocking*; BorrowError if it initialises and *blocking* (only that task
        could end the wait), or if *owner* does (reentry)."""
        self._check_thread()
        if self._state == _SET:
            return True, self._value
        if self._state == _RUNNING:
            if self._claimer == owner:
                raise BorrowError(
                    "OnceCell.get_or_init() was called again while this cell's initialiser "
                    "runs: the initialiser depends on its own result"
                )
            if blocking:
                raise _would_block("getting a OnceCell that another task is initialising")
            return None
        self._state, self._claimer = _RUNNING, owner
        return False, owner

    async def _async_claim(self, timeout: float | None) -> tuple[bool, Any] | None:
        return self._claim_as(current_owner(), async_timeout(timeout) == -1)

    def _publish(self, value: Any) -> None:
        self._state, self._value = _SET, value

    def _publish_as(self, owner: object, value: Any) -> None:
        self._publish(value)

    def _abandon(self) -> None:
        self._state = _EMPTY

    def _abandon_as(self, owner: object) -> None:
        self._abandon()


class AtomicInt(_Owned, p.AtomicInt):
    """A plain int: with one thread every operation is already indivisible."""

    __slots__ = ("_value",)

    def __init__(self, backend: SerialBackend, /, value: int = 0) -> None:
        super().__init__(backend)
        self._value = value

    def load(self) -> int:
        self._check_thread()
        return self._value

    def store(self, value: int) -> None:
        self._check_thread()
        self._value = operator.index(value)

    def swap(self, value: int) -> int:
        self._check_thread()
        old, self._value = self._value, operator.index(value)
        return old

    def fetch_add(self, delta: int) -> int:
        self._check_thread()
        old = self._value
        self._value = old + operator.index(delta)
        return old

    def compare_exchange(self, expected: int, new: int) -> int:
        self._check_thread()
        expected, new = operator.index(expected), operator.index(new)
        old = self._value
        if old == expected:
            self._value = new
        return old


class WorkerLocal(_Owned, p.WorkerLocal):
    """One value: the serial backend has one worker."""

    __slots__ = ("_factory", "_making", "_values")

    def __init__(self, backend: SerialBackend, /, factory: Callable[[], Any]) -> None:
        super().__init__(backend)
        self._factory = factory
        self._making = False  # the factory runs: a get() from it is a borrow error
        self._values: list[Any] = []

    def get(self) -> Any:
        self._check_thread()
        if not self._values:
            if self._making:
                p.raise_factory_reentered()
            self._making = True
            try:
                value = self._factory()
            finally:
                self._making = False
            self._values.append(value)
        return self._values[0]

    def collect(self) -> list[Any]:
        self._check_thread()
        return list(self._values)


class ShardedDict(_Owned, p.ShardedDict):
    """One plain dict: with one thread, one shard has no contention."""

    __slots__ = ("_dict",)

    def __init__(self, backend: SerialBackend, /) -> None:
        super().__init__(backend)
        self._dict: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        self._check_thread()
        return self._dict.get(key, default)

    def set(self, key: Any, value: Any) -> None:
        self._check_thread()
        self._dict[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._check_thread()
        return self._dict.setdefault(key, default)

    def pop(self, key: Any, default: Any = p.MISSING) -> Any:
        self._check_thread()
        if default is p.MISSING:
            return self._dict.pop(key)
        return self._dict.pop(key, default)

    def __len__(self) -> int:
        self._check_thread()
        return len(self._dict)

    def items(self) -> list[tuple[Any, Any]]:
        self._check_thread()
        return list(self._dict.items())


class FreezeLock(_Owned, p.FreezeLock):
    """A value with RefCell rules until frozen; then reads only."""

    __slots__ = ("_frozen", "_value", "_writing")

    def __init__(self, backend: SerialBackend, /, value: Any = None) -> None:
        super().__init__(backend)
        self._value = value
        self._frozen = False
        self._writing = False

    def _check_not_writing(self, what: str) -> None:
        self._check_thread()
        if self._writing:
            raise BorrowError(f"{what} a FreezeLock while its write guard lives")

    def read(self) -> Any:
        self._check_not_writing("reading")
        return self._value

    def freeze(self) -> Any:
        self._check_not_writing("freezing")
        self._frozen = True
        return self._value

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _acquire_write(self) -> None:
        self._check_not_writing("writing")
        if self._frozen:
            p.raise_frozen()
        self._writing = True

    def _release_write(self) -> None:
        self._writing = False

    async def _async_read(self, timeout: float | None) -> Any:
        if async_timeout(timeout) != -1 and self._writing:
            self._check_thread()
            return NOT_YET  # only the writer could end the wait: TimeoutError at once
        return self.read()

    async def _async_acquire_write(self, timeout: float | None) -> bool:
        if async_timeout(timeout) != -1 and self._writing:
            self._check_thread()
            return False
        self._acquire_write()
        return True

    def _load(self) -> Any:
        return self._value

    def _store(self, value: Any) -> None:
        self._value = value


class Queue(_Owned, p.Queue):
    """A deque: a get/put/join that would wait forever raises BorrowError."""

    __slots__ = ("_items", "_shutdown", "_unfinished", "maxsize")

    def __init__(self, backend: SerialBackend, /, maxsize: int = 0) -> None:
        super().__init__(backend)
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._unfinished = 0
        self._shutdown = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_thread()
        if self._shutdown:
            raise queue_shut_down("put")
        # queue.Queue's order: a bounded queue checks the timeout before looking for room.
        if self.maxsize > 0 and block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self._full():
            if block and timeout is None:
                raise _would_block("putting into a full Queue")
            raise Full
        self._items.append(item)
        self._unfinished += 1

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._check_thread()
        if self._shutdown and not self._items:
            raise queue_shut_down("get")
        if block and timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not self._items:
            if block and timeout is None:
                raise _would_block("getting from an empty Queue")
            raise Empty
        return self._items.popleft()

    async def async_put(self, item: Any, timeout: float | None = None) -> None:
        limit = async_timeout(timeout)
        self.put(item, True, None if limit == -1 else limit)

    async def async_get(self, timeout: float | None = None) -> Any:
        limit = async_timeout(timeout)
        return self.get(True, None if limit == -1 else limit)

    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    # queue.Queue's attributes, read-only here.
    @property
    def unfinished_tasks(self) -> int:
        self._check_thread()
        return self._unfinished

    @property
    def is_shutdown(self) -> bool:
        self._check_thread()
        return self._shutdown

    def qsize(self) -> int:
        self._check_thread()
        return len(self._items)

    def full(self) -> bool:
        self._check_thread()
        return self._full()

    def task_done(self) -> None:
        self._check_thread()
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1

    def join(self) -> None:
        self._check_thread()
        if self._unfinished:
            raise _would_block(f"joining a Queue with {self._unfinished} unfinished tasks")

    def shutdown(self, immediate: bool = False) -> None:
        self._check_thread()
        self._shutdown = True
        if immediate:
            self._unfinished = max(0, self._unfinished - len(self._items))
            self._items.clear()


class SerialBackend(Backend):
    """Runs everything on the calling thread; primitives are borrow-checked flags."""

    name = "serial"
    parallel = False

    # Each factory builds this module's class (docs/architecture.md#the-backend-protocol).
    create_lock = builds(Lock)
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
        # Accepted (and checked) so DUALMODE_WORKERS and DUALMODE_WATCHDOG can be set for a
        # whole matrix; serial always has exactly one worker, and nothing for a watchdog to
        # watch (its `watchdog` is None): its primitives never block, they raise BorrowError
        # where a wait could not end (docs/guarantees.md#the-deadlock-watchdog).
        check_watchdog(watchdog)
        super().__init__(workers)
        self._workers = 1

    # Tasks run in the caller, in submission order, so serial results are the reference.
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Outcome]:
        return run_now(capture, fn, *args)

    def map_chunks(
        self, fn: Callable[[Any], Any], chunks: Sequence[Sequence[Any]]
    ) -> list[Future[list[Outcome]]]:
        return [run_now(run_chunk, fn, chunk) for chunk in chunks]

    def wait(
        self, futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        return set(futures), set()  # every serial task finished when it was submitted

    def broadcast(self, fn: Callable[[], Any]) -> list[Future[Outcome]]:
        return [self.submit(fn)]
