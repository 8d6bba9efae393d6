"""The public synchronization primitives, each with its serial and parallel meaning side by side.

Calling a class here (``dm.Lock()``) builds the implementation of the backend in force, fixed
for the object's life, as rustc fixes ``Lock<T>``'s mode at construction. Every class takes a
keyword-only ``backend=`` (a name or a :class:`~dualmode.Backend`) to choose explicitly.

=============  =========================================  =====================================
primitive      serial (borrow flags, one thread)          threads / processes (real locks)
=============  =========================================  =====================================
Lock           a flag; re-acquiring raises BorrowError    a mutex; re-acquiring waits
RLock          a counter                                  a reentrant mutex
Semaphore      a counter; acquiring 0 raises BorrowError  a counting semaphore
Event          unset wait(), no timeout: BorrowError      set() wakes every waiter
Condition      wait(), no timeout: BorrowError            wait/notify
Barrier        parties > 1, no timeout: BorrowError       all parties meet
RwLock         RefCell: write while read raises           readers share, writers not starved
Mutex(value)   RefCell over the value                     a lock guarding the value
OnceCell       fn once; reentry raises BorrowError        fn runs once even when threads race
AtomicInt      a plain int                                exact under contention
WorkerLocal    one value                                  one value per worker thread/process
ShardedDict    one dict                                   shards: no single hot lock
FreezeLock     RefCell until freeze()                     RwLock until freeze(), then lock-free
Queue          a deque; waiting forever raises Borrow     a blocking FIFO queue
=============  =========================================  =====================================

A serial primitive used from a thread other than its creator raises
:class:`~dualmode.WrongThreadError`. Timeouts keep ``threading``'s meaning everywhere; a serial
wait that no other thread could end returns its timeout result at once instead of sleeping.

Backend authors: the methods marked *backend protocol* are the small operations a backend
implements; the public methods built from them (guards, ``get_or_init``...) are shared.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from .config import resolve_backend
from .errors import BorrowError

if TYPE_CHECKING:
    from types import TracebackType

    from .backend import Backend
    from .config import BackendSpec

__all__ = [
    "AtomicInt",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "FreezeLock",
    "Lock",
    "Mutex",
    "MutexGuard",
    "OnceCell",
    "Queue",
    "RLock",
    "RwLock",
    "Semaphore",
    "ShardedDict",
    "WorkerLocal",
    "WriteGuard",
    "check_timeout",
    "raise_frozen",
]

T = TypeVar("T")
MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING"})()


class _BackendDispatch(abc.ABCMeta):
    """Calling a public primitive class asks the chosen backend to build its implementation.

    A public class names its backend factory in ``_backend_method``; a backend's concrete subclass
    does not, so calling it constructs normally (and ``__init__`` runs exactly once).
    """

    def __call__(cls, *args: Any, backend: BackendSpec | None = None, **kwargs: Any) -> Any:
        factory = cls.__dict__.get("_backend_method")
        if factory is None:
            if backend is not None:
                raise TypeError(f"{cls.__qualname__}() takes no backend= argument")
            return super().__call__(*args, **kwargs)
        return getattr(resolve_backend(backend), factory)(*args, **kwargs)


class Primitive(metaclass=_BackendDispatch):
    """Base of every primitive: knows the backend that built it."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def backend(self) -> Backend:
        """The backend this object was built by (fixed for its life)."""


def check_timeout(blocking: bool, timeout: float | None) -> None:
    """``threading``'s argument rules for ``acquire(blocking, timeout)`` with timeout=-1 default."""
    if timeout is None:
        raise TypeError("timeout must be a number of seconds, or -1 for no timeout, not None")
    if timeout == -1:
        return
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")


class _LockLike(Primitive):
    __slots__ = ()

    @abc.abstractmethod
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire; True on success. ``blocking=False`` or a timeout gives False on failure."""

    @abc.abstractmethod
    def release(self) -> None:
        """Release. Raises RuntimeError when not held (by this thread, for RLock)."""

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Lock(_LockLike):
    """A mutual-exclusion lock, ``threading.Lock``-compatible.

    - serial: a flag. Acquiring it while held raises :class:`BorrowError` (blocking with no
      timeout) or returns False at once (``blocking=False`` or a timeout): no other thread
      could ever release it.
    - parallel: a real lock; acquiring while held waits, like ``threading.Lock``.
    """

    __slots__ = ()
    _backend_method = "create_lock"

    @abc.abstractmethod
    def locked(self) -> bool:
        """True if some thread holds the lock."""


class RLock(_LockLike):
    """A reentrant lock, ``threading.RLock``-compatible: the holder may acquire it again.

    - serial: a counter; only the creating thread exists, so it never waits.
    - parallel: a real reentrant lock, owned per thread.
    """

    __slots__ = ()
    _backend_method = "create_rlock"


class Semaphore(Primitive):
    """A counting semaphore, ``threading.Semaphore``-compatible.

    - serial: a counter. Acquiring at zero raises :class:`BorrowError` (blocking, no timeout)
      or returns False at once.
    - parallel: acquiring at zero waits for a ``release``.
    """

    __slots__ = ()
    _backend_method = "create_semaphore"

    @abc.abstractmethod
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; True on success, False on non-blocking or timed-out failure."""

    @abc.abstractmethod
    def release(self, n: int = 1) -> None:
        """Give back *n* units. BoundedSemaphore raises ValueError past its initial value."""

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A Semaphore whose ``release`` raises ValueError if it would exceed the initial value."""

    __slots__ = ()
    _backend_method = "create_bounded_semaphore"


class Event(Primitive):
    """A flag threads can wait for, ``threading.Event``-compatible.

    - serial: ``wait()`` on an unset event with no timeout raises :class:`BorrowError` (nobody
      else could set it); with a timeout it returns False at once.
    - parallel: ``wait`` blocks until ``set`` or the timeout.
    """

    __slots__ = ()
    _backend_method = "create_event"

    @abc.abstractmethod
    def is_set(self) -> bool: ...

    @abc.abstractmethod
    def set(self) -> None: ...

    @abc.abstractmethod
    def clear(self) -> None: ...

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """True once the flag is set; False if the timeout passed first."""


class Condition(_LockLike):
    """A condition variable over a Lock or RLock of the same backend (a new RLock by default).

    ``threading.Condition``-compatible: ``wait`` and ``notify`` need the lock held
    (RuntimeError otherwise); ``wait_for`` whose predicate is already true returns it
    without checking, as ``threading``'s does.

    - serial: ``wait()`` with no timeout raises :class:`BorrowError` (no thread could notify);
      with a timeout it returns False at once; ``wait_for`` returns the predicate's value.
    - parallel: ``wait`` releases the lock, sleeps until notified or timed out, re-acquires.
    """

    __slots__ = ()
    _backend_method = "create_condition"

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool: ...

    @abc.abstractmethod
    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T: ...

    @abc.abstractmethod
    def notify(self, n: int = 1) -> None: ...

    @abc.abstractmethod
    def notify_all(self) -> None: ...


class Barrier(Primitive):
    """``threading.Barrier``-compatible: ``parties`` callers of ``wait`` meet, then all go on.

    - serial: only one caller exists, so ``Barrier(1).wait()`` returns 0 and with more parties
      ``wait()`` raises :class:`BorrowError` (no timeout) or breaks the barrier and raises
      ``BrokenBarrierError`` at once (with a timeout, as ``threading`` does when it expires).
    - parallel: ``wait`` blocks until all parties arrive.
    """

    __slots__ = ()
    _backend_method = "create_barrier"

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """Wait for every party; returns a distinct index in ``range(parties)``."""

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    @property
    @abc.abstractmethod
    def parties(self) -> int: ...

    @property
    @abc.abstractmethod
    def n_waiting(self) -> int: ...

    @property
    @abc.abstractmethod
    def broken(self) -> bool: ...


class RwLock(Primitive):
    """A readers-writer lock: ``with rw.read(): ...`` shares, ``with rw.write(): ...`` excludes.

    - serial: a borrow counter (rustc's ``RefCell``): nested reads are fine; writing while any
      guard lives, or reading while writing, raises :class:`BorrowError` (or returns False at
      once from a non-blocking or timed acquire).
    - parallel: readers share; a waiting writer blocks new readers, so writers are not starved.
      A thread that already reads must not read again while a writer waits (it would deadlock,
      as with any writer-preferring lock).
    """

    __slots__ = ()
    _backend_method = "create_rwlock"

    @abc.abstractmethod
    def acquire_read(self, blocking: bool = True, timeout: float = -1) -> bool: ...

    @abc.abstractmethod
    def release_read(self) -> None:
        """Release one read hold; RuntimeError if no read hold exists."""

    @abc.abstractmethod
    def acquire_write(self, blocking: bool = True, timeout: float = -1) -> bool: ...

    @abc.abstractmethod
    def release_write(self) -> None:
        """Release the write hold; RuntimeError if it is not held."""

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold a shared read lock for the ``with`` block."""
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the exclusive write lock for the ``with`` block."""
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


class MutexGuard(Generic[T]):
    """Access to a locked :class:`Mutex`'s value; releases on ``with`` exit or ``release()``."""

    __slots__ = ("_held", "_mutex")

    def __init__(self, mutex: Mutex) -> None:
        self._mutex = mutex
        self._held = True

    def _check(self) -> Mutex:
        if not self._held:
            raise RuntimeError("this guard was released; take a new one with mutex.lock()")
        return self._mutex

    @property
    def value(self) -> T:
        value: T = self._check()._load()
        return value

    @value.setter
    def value(self, new: T) -> None:
        self._check()._store(new)

    def release(self) -> None:
        self._check()._release()
        self._held = False

    def __enter__(self) -> MutexGuard[T]:
        self._check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            self.release()


class Mutex(Primitive):
    """A value behind a lock (rustc's ``Lock<T>``): ``with m.lock() as g: g.value += 1``.

    ``lock()`` acquires at once and returns a :class:`MutexGuard`; leaving the ``with`` block
    (or ``guard.release()``) unlocks. ``try_lock()`` returns a guard or None.

    - serial: a borrow flag: ``lock()`` while a guard lives raises :class:`BorrowError`.
    - parallel: ``lock()`` waits for the holder; on processes the value lives in the
      coordinator, so it must pickle.
    """

    __slots__ = ()
    _backend_method = "create_mutex"

    def lock(self) -> MutexGuard[Any]:
        """Lock and return the guard; use it as ``with m.lock() as g:``."""
        self._acquire(True)
        return MutexGuard(self)

    def try_lock(self) -> MutexGuard[Any] | None:
        """Lock without waiting: a guard on success, None if held elsewhere."""
        return MutexGuard(self) if self._acquire(False) else None

    # backend protocol
    @abc.abstractmethod
    def _acquire(self, blocking: bool) -> bool: ...

    @abc.abstractmethod
    def _release(self) -> None: ...

    @abc.abstractmethod
    def _load(self) -> Any: ...

    @abc.abstractmethod
    def _store(self, value: Any) -> None: ...


class OnceCell(Primitive):
    """A cell written once: ``cell.get_or_init(fn)`` runs ``fn`` once, whoever asks first.

    If ``fn`` raises, the cell stays empty and the exception propagates; a later (or waiting)
    caller runs its own ``fn``. An initialiser that asks for its own cell raises
    :class:`BorrowError` on every backend (in parallel that is a certain deadlock).

    - serial: a slot and an "initialising" flag.
    - parallel: racing callers wait while the first runs ``fn``; on processes ``fn`` runs in
      the calling process and the value (which must pickle) is stored by the coordinator.
    """

    __slots__ = ()
    _backend_method = "create_once_cell"

    @abc.abstractmethod
    def get(self, default: Any = None) -> Any:
        """The value if set, else *default*; never waits."""

    @abc.abstractmethod
    def set(self, value: Any) -> bool:
        """Store *value* if the cell is empty and not being initialised; True if it stored."""

    def is_set(self) -> bool:
        return self.get(MISSING) is not MISSING

    def get_or_init(self, fn: Callable[[], T]) -> T:
        """The value; if the cell is empty, run ``fn()`` (once across racing callers) to set it."""
        while True:
            done, value = self._claim()
            if done:
                return value  # type: ignore[no-any-return]
            try:
                value = fn()
            except BaseException:
                self._abandon()
                raise
            self._publish(value)
            return value

    # backend protocol
    @abc.abstractmethod
    def _claim(self) -> tuple[bool, Any]:
        """``(True, value)`` if set; else wait while another caller initialises, then either
        return its value or ``(False, None)``: the caller must now run fn and publish/abandon.
        Raises BorrowError if the calling thread already holds the claim."""

    @abc.abstractmethod
    def _publish(self, value: Any) -> None: ...

    @abc.abstractmethod
    def _abandon(self) -> None: ...


class AtomicInt(Primitive):
    """An integer updated atomically (``std::sync::atomic``, sequentially consistent).

    - serial: a plain int.
    - parallel: every operation is one indivisible step, exact under any contention; on
      processes the integer lives in the coordinator.
    """

    __slots__ = ()
    _backend_method = "create_atomic_int"

    @abc.abstractmethod
    def load(self) -> int: ...

    @abc.abstractmethod
    def store(self, value: int) -> None: ...

    @abc.abstractmethod
    def swap(self, value: int) -> int:
        """Store *value*; return the previous value."""

    @abc.abstractmethod
    def fetch_add(self, delta: int) -> int:
        """Add *delta*; return the previous value."""

    def fetch_sub(self, delta: int) -> int:
        """Subtract *delta*; return the previous value."""
        return self.fetch_add(-delta)

    @abc.abstractmethod
    def compare_exchange(self, expected: int, new: int) -> int:
        """Store *new* if the value equals *expected*. Returns the value found before the call,
        so the exchange happened exactly when the result equals *expected*."""


class WorkerLocal(Primitive):
    """A value per worker (rustc's ``WorkerLocal``), made by ``factory()`` on first ``get()``.

    - serial: one value.
    - threads: one value per thread that called ``get()``.
    - processes: one value per process that called ``get()``. ``collect()`` sees a copy of each
      process's value as published at its first ``get()``, after each task the process runs,
      and when the process exits, so ``factory`` and the values must pickle.
    """

    __slots__ = ()
    _backend_method = "create_worker_local"

    @abc.abstractmethod
    def get(self) -> Any:
        """This worker's value, created by ``factory()`` on first use."""

    @abc.abstractmethod
    def collect(self) -> list[Any]:
        """Every worker's value, one per worker that called ``get()``, in first-use order."""


class ShardedDict(Primitive):
    """A concurrent dict (rustc's ``Sharded<HashMap>``). Each single operation is atomic.

    - serial: one dict.
    - threads: many shards chosen by hash, so threads on different keys do not contend.
    - processes: hosted by the coordinator; keys and values must pickle.

    ``items()`` order is unspecified (it differs between shard layouts); compare as a dict.
    ``get_or_insert_with(key, fn)`` may run ``fn`` in more than one racing caller, but all of
    them get the one value that was stored; use a OnceCell for run-exactly-once.
    """

    __slots__ = ()
    _backend_method = "create_sharded_dict"

    @abc.abstractmethod
    def get(self, key: Any, default: Any = None) -> Any: ...

    @abc.abstractmethod
    def set(self, key: Any, value: Any) -> None: ...

    @abc.abstractmethod
    def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value for *key*, inserting *default* first if absent (atomically)."""

    @abc.abstractmethod
    def pop(self, key: Any, default: Any = MISSING) -> Any:
        """Remove *key* and return its value; *default* (or KeyError) when absent."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def items(self) -> list[tuple[Any, Any]]:
        """A snapshot of the entries, in no particular order."""

    def get_or_insert_with(self, key: Any, fn: Callable[[], T]) -> T:
        """The value for *key*; if absent, insert ``fn()`` unless a racing caller won first."""
        value = self.get(key, MISSING)
        if value is MISSING:
            value = self.setdefault(key, fn())
        return value  # type: ignore[no-any-return]

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, MISSING)
        if value is MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __contains__(self, key: Any) -> bool:
        return self.get(key, MISSING) is not MISSING


class WriteGuard(Generic[T]):
    """Write access to a :class:`FreezeLock`'s value; released on ``with`` exit."""

    __slots__ = ("_held", "_lock")

    def __init__(self, lock: FreezeLock) -> None:
        self._lock = lock
        self._held = True

    def _check(self) -> FreezeLock:
        if not self._held:
            raise RuntimeError("this write guard was released; take a new one with write()")
        return self._lock

    @property
    def value(self) -> T:
        value: T = self._check()._load()
        return value

    @value.setter
    def value(self, new: T) -> None:
        self._check()._store(new)

    def release(self) -> None:
        self._check()._release_write()
        self._held = False

    def __enter__(self) -> WriteGuard[T]:
        self._check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            self.release()


class FreezeLock(Primitive):
    """A value writable until ``freeze()``, then read-only with lock-free reads (rustc's).

    ``with fl.write() as g: g.value = ...`` writes; ``fl.read()`` returns the value;
    ``fl.freeze()`` makes it immutable and returns it. Writing after ``freeze()`` raises
    :class:`BorrowError` on every backend; ``freeze()`` is idempotent.

    - serial: RefCell rules while unfrozen: reading or writing while a write guard lives
      raises :class:`BorrowError`.
    - parallel: an RwLock until frozen (``freeze`` waits for a live writer), then plain reads.
    """

    __slots__ = ()
    _backend_method = "create_freeze_lock"

    @abc.abstractmethod
    def read(self) -> Any: ...

    @abc.abstractmethod
    def freeze(self) -> Any: ...

    @property
    @abc.abstractmethod
    def frozen(self) -> bool: ...

    def write(self) -> WriteGuard[Any]:
        """Take the write lock and return its guard; BorrowError if frozen."""
        self._acquire_write()
        return WriteGuard(self)

    # backend protocol
    @abc.abstractmethod
    def _acquire_write(self) -> None: ...

    @abc.abstractmethod
    def _release_write(self) -> None: ...

    @abc.abstractmethod
    def _load(self) -> Any: ...

    @abc.abstractmethod
    def _store(self, value: Any) -> None: ...


class Queue(Primitive):
    """A FIFO queue, ``queue.Queue``-compatible, with Python 3.13's ``shutdown``.

    Raises ``queue.Empty``/``queue.Full`` like ``queue.Queue`` and
    :data:`dualmode.QueueShutDown` after ``shutdown()``.

    - serial: a deque. A ``get`` on an empty queue (or ``put`` on a full one, or ``join`` with
      unfinished tasks) that would block with no timeout raises :class:`BorrowError`; with a
      timeout it raises Empty/Full at once.
    - parallel: blocking calls wait; on processes the queue lives in the coordinator.
    """

    __slots__ = ()
    _backend_method = "create_queue"

    @abc.abstractmethod
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None: ...

    @abc.abstractmethod
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    @abc.abstractmethod
    def qsize(self) -> int: ...

    def empty(self) -> bool:
        return self.qsize() == 0

    @abc.abstractmethod
    def full(self) -> bool: ...

    @abc.abstractmethod
    def task_done(self) -> None:
        """Mark one fetched item done; ValueError if called more times than items were put."""

    @abc.abstractmethod
    def join(self) -> None:
        """Wait until every item put has been marked done."""

    @abc.abstractmethod
    def shutdown(self, immediate: bool = False) -> None:
        """Refuse new puts; with *immediate*, also drop queued items and wake all getters."""


def raise_frozen() -> NoReturn:
    raise BorrowError("this FreezeLock is frozen: its value can no longer be written")
