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
implements; the public methods built from them (guards, ``get_or_init``...) are shared. How
``dm.Lock()`` reaches a backend's class is in docs/architecture.md#the-backend-protocol.
"""

from __future__ import annotations

import abc
import inspect
import numbers
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from queue import Empty, Full
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    NoReturn,
    Protocol,
    SupportsIndex,
    TypeVar,
    cast,
    overload,
)

from .backend import Backend
from .config import resolve_backend
from .errors import BorrowError, BrokenBarrierError, check_callable
from .off_loop import NOT_YET, async_timeout, get_off_loop, wait_off_loop

if TYPE_CHECKING:
    from types import TracebackType

    from .config import BackendSpec

__all__ = [
    "AnyLock",
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
_P = TypeVar("_P")
_F = TypeVar("_F", bound=Callable[..., Any])
MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING"})()


def _abstract(method: _F) -> _F:
    """Mark *method* as one that every backend's class defines: ``abc.abstractmethod`` at run
    time, so building a backend's class that lacks one raises TypeError naming each missing
    method, the first time its factory builds it.

    Spelled out rather than written ``@abc.abstractmethod`` because type checkers would then
    call the public class abstract and refuse ``dm.Lock()``; they do not know this marker, so
    they see what users get, a concrete class (as typeshed declares ``threading.Lock``). The
    body of a marked method only raises NotImplementedError: it never runs.
    """
    return abc.abstractmethod(method)


class _BackendDispatch(abc.ABCMeta):
    """Calling a public primitive class asks the chosen backend to build its implementation.

    A public class's ``__new__`` is its constructor, as in anyio: the signature that users,
    ``help()`` and type checkers see, ``backend=`` keyword-only. It checks the arguments and
    returns what the backend's factory built (``backend.create_lock()``): an instance of the
    backend's own subclass, already initialised. Left in place, that ``__new__`` would be
    inherited by the backend's subclass, and Python would call ``__init__`` again on what it
    returns, with the public arguments. So the metaclass takes it off each public class as the
    class is created, keeps it as ``_create``, and ``__call__`` runs it and nothing more. A
    backend's subclass has no ``_create``: calling it (as its factory does) builds it as any
    class is built, ``object.__new__`` and its own ``__init__`` once.
    """

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], /, **kwargs: Any
    ) -> _BackendDispatch:
        if namespace.get("__module__") == __name__ and "__new__" in namespace:
            namespace["_create"] = namespace.pop("__new__")
        return super().__new__(mcls, name, bases, namespace, **kwargs)

    def __call__(
        cls: type[_P], *args: Any, backend: BackendSpec | None = None, **kwargs: Any
    ) -> _P:
        create: Callable[..., _P] | None = cls.__dict__.get("_create")
        if create is None:  # a backend's class, built by its factory
            if backend is not None:
                public = next(k for k in cls.__mro__ if "_create" in k.__dict__)
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__}() is a backend's class and takes no "
                    f"backend= argument; call dm.{public.__name__}(backend=...) to choose one"
                )
            built: _P = type.__call__(cls, *args, **kwargs)
            return built
        try:
            return create(cls, *args, backend=backend, **kwargs)
        except TypeError:
            misuse = _misuse(cls.__name__, create, args, kwargs)
            if misuse is None:  # the arguments fit: the TypeError came from further in
                raise
            raise misuse from None

    @property
    def __signature__(cls) -> inspect.Signature | None:
        """A public class's constructor signature, for ``inspect.signature`` and ``help()``;
        None (inspect's usual search) for a backend's class."""
        create = cls.__dict__.get("_create")
        return None if create is None else _constructor_signature(create)


def _constructor_signature(create: Callable[..., Any]) -> inspect.Signature:
    """``dm.<name>``'s signature: its ``__new__``'s (kept as ``_create``) without ``cls``."""
    signature = inspect.signature(create)
    params = list(signature.parameters.values())[1:]
    return signature.replace(parameters=params, return_annotation=inspect.Signature.empty)


def _backend_hint(name: str, value: object, rest: str = "..., ") -> str:
    """What to say when a positional argument may be a backend meant as ``backend=``."""
    if isinstance(value, str | Backend):
        return f"; the backend is keyword-only: dm.{name}({rest}backend={value!r})"
    return ""


def _misuse(
    name: str, create: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
) -> TypeError | None:
    """The TypeError for arguments that do not fit dm.<name>'s signature; None if they fit."""
    signature = _constructor_signature(create)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        reason = str(exc)
    else:
        return None
    params = [
        param.replace(annotation=inspect.Parameter.empty) for param in signature.parameters.values()
    ]
    shown = signature.replace(parameters=params)
    keywords = [f"{key}={value!r}" for key, value in kwargs.items()]
    call = ", ".join([*map(repr, args), *keywords])
    message = f"dm.{name}({call}): {reason}; the signature is dm.{name}{shown}"
    # A surplus positional argument that names a backend, or is one, was meant as backend=.
    accepted = sum(param.kind is param.POSITIONAL_OR_KEYWORD for param in params)
    for value in args[accepted:]:
        if isinstance(value, str | Backend):
            kept = "".join(f"{arg}, " for arg in [*map(repr, args[:accepted]), *keywords])
            return TypeError(message + _backend_hint(name, value, kept))
    return TypeError(message)


def _int_argument(name: str, param: str, value: object) -> int:
    """*value* as an int (``operator.index``), or a TypeError naming dm.<name>'s *param*."""
    if type(value) is int:  # the common case, without a protocol check
        return value
    try:
        return operator.index(cast("SupportsIndex", value))
    except TypeError:
        raise TypeError(
            f"dm.{name}(): {param} must be an int, got {value!r} ({type(value).__name__})"
            + _backend_hint(name, value)
        ) from None


def _callable_argument(name: str, param: str, value: object, *, optional: bool = False) -> None:
    if not (callable(value) or (optional and value is None)):
        allowed = "a callable or None" if optional else "a callable"
        raise TypeError(
            f"dm.{name}(): {param} must be {allowed}, got {value!r} ({type(value).__name__})"
            + _backend_hint(name, value)
        )


class AnyLock(Protocol):
    """What ``Condition(lock)`` needs of its lock: ``threading.Lock``, ``threading.RLock``, a
    dualmode Lock or RLock (each backend says which it accepts)."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...

    def release(self) -> None: ...


class Primitive(metaclass=_BackendDispatch):
    """Base of every primitive: knows the backend that built it."""

    __slots__ = ()

    @property
    @_abstract
    def backend(self) -> Backend:
        """The backend this object was built by (fixed for its life)."""
        raise NotImplementedError


def _semaphore_value(name: str, value: object) -> int:
    checked = _int_argument(name, "value", value)
    if checked < 0:
        raise ValueError(f"dm.{name}(): the initial value must be >= 0, got {checked}")
    return checked


def check_timeout(blocking: bool, timeout: float | None) -> None:
    """``threading``'s argument rules for ``acquire(blocking, timeout)`` with timeout=-1 default."""
    if timeout is None:
        raise TypeError("timeout must be a number of seconds, or -1 for no timeout, not None")
    if timeout == -1:
        return
    if not isinstance(timeout, numbers.Real):
        raise TypeError(
            "timeout must be a number of seconds, or -1 for no timeout, "
            f"got {type(timeout).__name__}: {timeout!r}"
        )
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    if timeout > threading.TIMEOUT_MAX:
        raise OverflowError("timeout value is too large")


class _Held(Primitive):
    """``with x:`` and ``async with x:`` over ``acquire`` / ``async_acquire`` and ``release``,
    for the locks and the semaphores."""

    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: Any = -1) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    async def async_acquire(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.async_acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _LockLike(_Held):
    __slots__ = ()

    @_abstract
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire; True on success. ``blocking=False`` or a timeout gives False on failure."""
        raise NotImplementedError

    @_abstract
    def release(self) -> None:
        """Release. Raises RuntimeError when not held (by this thread, for RLock)."""
        raise NotImplementedError

    @_abstract
    async def async_acquire(self, timeout: float | None = None) -> bool:
        """Acquire from async code; see each class's own."""
        raise NotImplementedError


class Lock(_LockLike):
    """A mutual-exclusion lock, ``threading.Lock``-compatible.

    - serial: a flag. Acquiring it while held raises :class:`BorrowError` (blocking with no
      timeout) or returns False at once (``blocking=False`` or a timeout): no other thread
      could ever release it.
    - parallel: a real lock; acquiring while held waits, like ``threading.Lock``.
    """

    __slots__ = ()

    def __new__(cls, *, backend: BackendSpec | None = None) -> Lock:
        return resolve_backend(backend).create_lock()

    @_abstract
    def locked(self) -> bool:
        """True if some thread holds the lock."""
        raise NotImplementedError

    async def async_acquire(self, timeout: float | None = None) -> bool:
        """Acquire from async code (asyncio or trio) without blocking the event loop.

        True once acquired; False if *timeout* seconds (None: no limit) passed first.
        Cancelled while it waits, it holds nothing afterwards. Tasks and threads
        (``acquire()``) wait for the same lock (threads: in one FIFO queue). An uncontended
        acquire does not yield to the loop, as ``asyncio.Lock``'s does not.

        - serial: a held lock raises :class:`BorrowError` (no timeout) or returns False at once.
        - parallel: waits for a ``release`` from any thread or task.
        """
        return await wait_off_loop(
            lambda seconds: self.acquire(True, seconds), self.release, timeout
        )


class RLock(_LockLike):
    """A reentrant lock, ``threading.RLock``-compatible: the holder may acquire it again.

    The holder is a thread or a task: ``acquire()`` or ``async_acquire()`` called from an
    asyncio or trio task makes that task the owner (it may re-acquire across awaits; another
    task of the same thread may not, it waits), otherwise the calling thread. Only the owner
    may release it (RuntimeError otherwise).

    - serial: a counter and its owner; acquiring it while another task of the thread holds it
      raises :class:`BorrowError` (blocking, no timeout) or returns False at once.
    - parallel: a real reentrant lock; threads and tasks wait for it (threads: in one FIFO
      queue).
    """

    __slots__ = ()

    def __new__(cls, *, backend: BackendSpec | None = None) -> RLock:
        return resolve_backend(backend).create_rlock()

    @_abstract
    async def async_acquire(self, timeout: float | None = None) -> bool:
        """Acquire from async code (asyncio or trio) without blocking the event loop; the
        calling task becomes the owner, or, if it owns the lock already, acquires it again.

        True once acquired; False if *timeout* seconds (None: no limit) passed first; a
        negative timeout is a ValueError. Cancelled while it waits, it holds nothing more.

        - serial: held by another task raises :class:`BorrowError` (no timeout) or returns
          False at once.
        - parallel: waits for the owner's last ``release``, from any thread or task.
        """
        raise NotImplementedError


class Semaphore(_Held):
    """A counting semaphore, ``threading.Semaphore``-compatible.

    - serial: a counter. Acquiring at zero raises :class:`BorrowError` (blocking, no timeout)
      or returns False at once.
    - parallel: acquiring at zero waits for a ``release``.
    """

    __slots__ = ()

    def __new__(cls, value: int = 1, *, backend: BackendSpec | None = None) -> Semaphore:
        return resolve_backend(backend).create_semaphore(_semaphore_value("Semaphore", value))

    @_abstract
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; True on success, False on non-blocking or timed-out failure."""
        raise NotImplementedError

    @_abstract
    def release(self, n: int = 1) -> None:
        """Give back *n* units. BoundedSemaphore raises ValueError past its initial value."""
        raise NotImplementedError

    async def async_acquire(self, timeout: float | None = None) -> bool:
        """Take one unit from async code (asyncio or trio) without blocking the event loop.

        True once taken; False if *timeout* seconds (None: no limit) passed first. Cancelled
        while it waits, it has taken nothing. Tasks and threads wait for the same units
        (threads: in one FIFO queue).

        - serial: at zero raises :class:`BorrowError` (no timeout) or returns False at once.
        - parallel: waits for a ``release`` from any thread or task.
        """
        return await wait_off_loop(
            lambda seconds: self.acquire(True, seconds), self.release, timeout
        )


class BoundedSemaphore(Semaphore):
    """A Semaphore whose ``release`` raises ValueError if it would exceed the initial value."""

    __slots__ = ()

    def __new__(cls, value: int = 1, *, backend: BackendSpec | None = None) -> BoundedSemaphore:
        return resolve_backend(backend).create_bounded_semaphore(
            _semaphore_value("BoundedSemaphore", value)
        )


class Event(Primitive):
    """A flag threads can wait for, ``threading.Event``-compatible.

    - serial: ``wait()`` on an unset event with no timeout raises :class:`BorrowError` (nobody
      else could set it); with a timeout it returns False at once.
    - parallel: ``wait`` blocks until ``set`` or the timeout.
    """

    __slots__ = ()

    def __new__(cls, *, backend: BackendSpec | None = None) -> Event:
        return resolve_backend(backend).create_event()

    @_abstract
    def is_set(self) -> bool:
        raise NotImplementedError

    @_abstract
    def set(self) -> None:
        raise NotImplementedError

    @_abstract
    def clear(self) -> None:
        raise NotImplementedError

    @_abstract
    def wait(self, timeout: float | None = None) -> bool:
        """True once the flag is set; False if the timeout passed first."""
        raise NotImplementedError

    async def async_wait(self, timeout: float | None = None) -> bool:
        """``wait`` from async code (asyncio or trio), without blocking the event loop: True
        once the flag is set, False if *timeout* seconds (None: no limit) passed first.

        - serial: unset with no timeout raises :class:`BorrowError`; with one, False at once.
        - parallel: ``set`` from any thread or task wakes it.
        """
        return await wait_off_loop(self.wait, None, timeout)


class Condition(_LockLike):
    """A condition variable over a Lock or RLock of the same backend (a new RLock by default);
    threads also accepts a ``threading`` lock, as ``threading.Condition`` does. Which locks each
    backend accepts, and the TypeError for others: docs/primitives.md#waiting.

    ``threading.Condition``-compatible: ``wait`` and ``notify`` need the lock held
    (RuntimeError otherwise); ``wait_for`` whose predicate is already true returns it
    without checking, as ``threading``'s does.

    - serial: ``wait()`` with no timeout raises :class:`BorrowError` (no thread could notify);
      with a timeout it returns False at once; ``wait_for`` returns the predicate's value.
    - parallel: ``wait`` releases the lock, sleeps until notified or timed out, re-acquires.
    """

    __slots__ = ()

    def __new__(
        cls, lock: AnyLock | None = None, *, backend: BackendSpec | None = None
    ) -> Condition:
        chosen = resolve_backend(backend)
        if lock is not None and not (
            callable(getattr(lock, "acquire", None)) and callable(getattr(lock, "release", None))
        ):
            raise TypeError(
                f"dm.Condition(lock): lock must be a lock (with acquire() and release()) or None "
                f"for a new RLock, got {lock!r} ({type(lock).__name__})"
                + _backend_hint("Condition", lock, "")
            )
        return chosen.create_condition(lock)

    @_abstract
    def wait(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (it runs here, lock held); its last value.

        As ``threading.Condition.wait_for``: the lock must be held (RuntimeError otherwise).
        """
        result = predicate()
        for remaining in _time_left(timeout):
            if result:
                break
            self.wait(remaining)
            result = predicate()
        return result

    @_abstract
    def notify(self, n: int = 1) -> None:
        raise NotImplementedError

    @_abstract
    def notify_all(self) -> None:
        raise NotImplementedError

    @_abstract
    async def async_acquire(self, timeout: float | None = None) -> bool:
        """Acquire the condition's lock from async code (asyncio or trio), as that lock's
        ``async_acquire`` does (an RLock's owner is then the task); ``async with cond:``
        holds it for the block. True, or False once *timeout* seconds (None: no limit)
        passed."""
        raise NotImplementedError

    @_abstract
    async def async_wait(self, timeout: float | None = None) -> bool:
        """``wait`` from async code (asyncio or trio), without blocking the event loop: the
        calling task must hold the lock (RuntimeError otherwise); it lets go of it, waits
        until notified (``notify`` from any thread or task) or *timeout* seconds (None: no
        limit; negative: ValueError) pass, takes the lock back, and returns True if it was
        notified, False if the time ran out.

        The lock is taken back in every case, cancellation included (as asyncio's and
        trio's Conditions do): cancelled, the task holds the lock again when the cancellation
        goes on, so that ``async with cond:`` releases it. A notification that reached a
        cancelled waiter in the same instant goes to the next waiter.

        - serial: no timeout raises :class:`BorrowError` (no one could notify); with one,
          False at once.
        - threads: tasks and threads wait in one FIFO queue; the lock must be a dualmode Lock
          or RLock of this backend (TypeError for a ``threading`` lock, which a task could
          only take back by blocking its loop).
        - processes: the wait runs on a helper thread of its own, in the coordinator's queue.
        """
        raise NotImplementedError

    async def async_wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """``wait_for`` from async code: ``await async_wait()`` until ``predicate()`` (run
        here, lock held) is true, or *timeout* seconds (None: no limit) passed; its last
        value. The lock must be held by the calling task."""
        limit = async_timeout(timeout)
        result = predicate()
        for remaining in _time_left(None if limit == -1 else limit):
            if result:
                break
            await self.async_wait(remaining)
            result = predicate()
        return result


def _time_left(timeout: float | None) -> Iterator[float | None]:
    """The timeout of each wait of a ``wait_for`` loop: the seconds left of *timeout* (None:
    no limit, forever), until none are."""
    if timeout is None:
        while True:
            yield None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield left


class Barrier(Primitive):
    """``threading.Barrier``-compatible: ``parties`` callers of ``wait`` meet, then all go on.

    - serial: only one caller exists, so ``Barrier(1).wait()`` returns 0 and with more parties
      ``wait()`` raises :class:`BorrowError` (no timeout) or breaks the barrier and raises
      ``BrokenBarrierError`` at once (with a timeout, as ``threading`` does when it expires).
    - parallel: ``wait`` blocks until all parties arrive.
    """

    __slots__ = ()

    def __new__(
        cls,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        backend: BackendSpec | None = None,
    ) -> Barrier:
        chosen = resolve_backend(backend)
        parties = _int_argument("Barrier", "parties", parties)
        if parties < 1:
            raise ValueError(f"dm.Barrier(): parties must be >= 1, got {parties}")
        _callable_argument("Barrier", "action", action, optional=True)
        if timeout is not None and not isinstance(timeout, numbers.Real):
            raise TypeError(
                f"dm.Barrier(): timeout must be a number of seconds or None, got {timeout!r} "
                f"({type(timeout).__name__})" + _backend_hint("Barrier", timeout)
            )
        return chosen.create_barrier(parties, action, timeout)

    @_abstract
    def wait(self, timeout: float | None = None) -> int:
        """Wait for every party; returns a distinct index in ``range(parties)``."""
        raise NotImplementedError

    async def async_wait(self, timeout: float | None = None) -> int:
        """``wait`` from async code (asyncio or trio), without blocking the event loop:
        tasks and threads are parties alike. *timeout* (None: the barrier's own) breaks the
        barrier when it passes, as ``wait``'s does; so does cancelling the task while it
        waits (``abort()``: the other parties get ``BrokenBarrierError`` rather than wait for
        a party that left). A cancellation that comes in the instant the parties met may
        leave the barrier broken for the next round: ``reset()`` mends it.

        - serial: with more than one party, BorrowError (no timeout) or a broken barrier at
          once, as ``wait``.
        - parallel: the wait runs on a helper thread of its own (one per waiting task, none
          shared with other waits, so any number of parties may wait), as a thread's would.
        """
        import anyio
        import anyio.to_thread

        from .parking_lot import wait_done

        limit = async_timeout(timeout)
        finished: Future[None] = Future()
        guard = threading.Lock()
        started = gone = False

        def wait() -> int:
            nonlocal started
            with guard:
                if gone:  # cancelled before this thread got to it: not a party
                    raise BrokenBarrierError
                started = True
            try:
                return self.wait(None if limit == -1 else limit)
            finally:
                finished.set_result(None)

        # A limiter of its own: anyio's default (40 threads) would let the 41st party wait
        # for a thread that the first 40, waiting for it, never give back.
        own = anyio.CapacityLimiter(1)
        try:
            return await anyio.to_thread.run_sync(wait, abandon_on_cancel=True, limiter=own)
        except BaseException as exc:
            if isinstance(exc, Exception) or finished.done():
                raise  # the wait's own error; or it had passed: nothing waits for it
            with guard:
                gone = True  # if its helper thread has not started, it never will
                waiting = started
            # A party left: the others must not wait for it.
            self.abort()
            if waiting:  # let its helper end first, lest it arrive in a later round
                with anyio.CancelScope(shield=True):
                    await wait_done([finished])
            raise

    @_abstract
    def reset(self) -> None:
        raise NotImplementedError

    @_abstract
    def abort(self) -> None:
        raise NotImplementedError

    @property
    @_abstract
    def parties(self) -> int:
        raise NotImplementedError

    @property
    @_abstract
    def n_waiting(self) -> int:
        raise NotImplementedError

    @property
    @_abstract
    def broken(self) -> bool:
        raise NotImplementedError


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

    def __new__(cls, *, backend: BackendSpec | None = None) -> RwLock:
        return resolve_backend(backend).create_rwlock()

    @_abstract
    def acquire_read(self, blocking: bool = True, timeout: float = -1) -> bool:
        raise NotImplementedError

    @_abstract
    def release_read(self) -> None:
        """Release one read hold; RuntimeError if no read hold exists."""
        raise NotImplementedError

    @_abstract
    def acquire_write(self, blocking: bool = True, timeout: float = -1) -> bool:
        raise NotImplementedError

    @_abstract
    def release_write(self) -> None:
        """Release the write hold; RuntimeError if it is not held."""
        raise NotImplementedError

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

    def async_read(self, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        """``async with rw.async_read():`` holds a read lock for the block, taken from async
        code (asyncio or trio) without blocking the event loop. Raises TimeoutError if
        *timeout* seconds (None: no limit) pass first; cancelled while it waits, it holds
        nothing. serial: BorrowError (no timeout) or TimeoutError at once, as ``read()``."""
        return self._async_hold("read", timeout)

    def async_write(self, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        """``async with rw.async_write():``: the write lock for the block; see
        :meth:`async_read`."""
        return self._async_hold("write", timeout)

    @asynccontextmanager
    async def _async_hold(self, how: str, timeout: float | None) -> AsyncIterator[None]:
        if not await self._async_acquire(how, timeout):
            raise TimeoutError(f"could not {how}-lock the RwLock within {timeout} s")
        try:
            yield
        finally:
            (self.release_read if how == "read" else self.release_write)()

    # backend protocol, with a default
    async def _async_acquire(self, how: str, timeout: float | None) -> bool:
        """Take the *how* ("read" or "write") hold from async code: True, or False once
        *timeout* passed. By default, waits off the loop in slices (dualmode/off_loop.py):
        holds are counted, not owned, so a helper thread may take one for a task."""
        acquire = self.acquire_read if how == "read" else self.acquire_write
        release = self.release_read if how == "read" else self.release_write
        return await wait_off_loop(lambda seconds: acquire(True, seconds), release, timeout)


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


G = TypeVar("G", bound="MutexGuard[Any] | WriteGuard[Any]")


class _AsyncGuard(Generic[G]):
    """What :meth:`Mutex.async_lock` and :meth:`FreezeLock.async_write` return: awaited, the
    guard; ``async with``, the guard for the block, released at its end."""

    __slots__ = ("_guard", "_take")

    def __init__(self, take: Callable[[], Awaitable[G]]) -> None:
        self._take = take
        self._guard: G | None = None

    def __await__(self) -> Generator[Any, None, G]:
        return self._take().__await__()

    async def __aenter__(self) -> G:
        self._guard = await self._take()
        return self._guard

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, self._guard = self._guard, None
        if guard is not None and guard._held:
            guard.release()


class Mutex(Primitive):
    """A value behind a lock (rustc's ``Lock<T>``): ``with m.lock() as g: g.value += 1``.

    ``lock()`` acquires at once and returns a :class:`MutexGuard`; leaving the ``with`` block
    (or ``guard.release()``) unlocks. ``try_lock()`` returns a guard or None.

    - serial: a borrow flag: ``lock()`` while a guard lives raises :class:`BorrowError`.
    - parallel: ``lock()`` waits for the holder; on processes the value lives in the
      coordinator, so it must pickle.
    """

    __slots__ = ()

    def __new__(cls, value: Any = None, *, backend: BackendSpec | None = None) -> Mutex:
        return resolve_backend(backend).create_mutex(value)

    def lock(self) -> MutexGuard[Any]:
        """Lock and return the guard; use it as ``with m.lock() as g:``."""
        self._acquire(True)
        return MutexGuard(self)

    def try_lock(self) -> MutexGuard[Any] | None:
        """Lock without waiting: a guard on success, None if held elsewhere."""
        return MutexGuard(self) if self._acquire(False) else None

    def async_lock(self, timeout: float | None = None) -> _AsyncGuard[MutexGuard[Any]]:
        """Lock from async code (asyncio or trio) without blocking the event loop:
        ``async with m.async_lock() as g: g.value += 1``, or ``g = await m.async_lock()``.

        Raises TimeoutError if *timeout* seconds (None: no limit) pass first; cancelled while
        it waits, it holds nothing.

        - serial: a live guard raises :class:`BorrowError` (no timeout), TimeoutError at once.
        - parallel: waits for the holder, thread or task (threads: in one FIFO queue).
        """

        async def take() -> MutexGuard[Any]:
            if not await self._async_acquire(timeout):
                raise TimeoutError(
                    f"could not lock the Mutex within {timeout} s: another thread or task holds it"
                )
            return MutexGuard(self)

        return _AsyncGuard(take)

    # backend protocol, with defaults
    async def _async_acquire(self, timeout: float | None) -> bool:
        """Acquire from async code: True, or False once *timeout* passed. By default, waits
        off the loop in slices of ``_acquire_for`` (see dualmode/off_loop.py)."""
        return await wait_off_loop(self._acquire_for, self._release, timeout)

    def _acquire_for(self, seconds: float) -> bool:
        """Acquire, waiting at most *seconds*: what the default ``_async_acquire`` calls."""
        raise NotImplementedError(
            f"{type(self).__qualname__} defines neither _async_acquire nor _acquire_for"
        )

    # backend protocol
    @_abstract
    def _acquire(self, blocking: bool) -> bool:
        raise NotImplementedError

    @_abstract
    def _release(self) -> None:
        raise NotImplementedError

    @_abstract
    def _load(self) -> Any:
        raise NotImplementedError

    @_abstract
    def _store(self, value: Any) -> None:
        raise NotImplementedError


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

    def __new__(cls, *, backend: BackendSpec | None = None) -> OnceCell:
        return resolve_backend(backend).create_once_cell()

    @_abstract
    def get(self, default: Any = None) -> Any:
        """The value if set, else *default*; never waits."""
        raise NotImplementedError

    @_abstract
    def set(self, value: Any) -> bool:
        """Store *value* if the cell is empty and not being initialised; True if it stored."""
        raise NotImplementedError

    def is_set(self) -> bool:
        return self.get(MISSING) is not MISSING

    def get_or_init(self, fn: Callable[[], T]) -> T:
        """The value; if the cell is empty, run ``fn()`` (once across racing callers) to set it.
        TypeError if *fn* is not callable (to store a value, use :meth:`set`)."""
        check_callable("OnceCell.get_or_init", "fn", fn)
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

    @overload
    async def async_get_or_init(
        self, fn: Callable[[], Awaitable[T]], timeout: float | None = None
    ) -> T: ...

    @overload
    async def async_get_or_init(self, fn: Callable[[], T], timeout: float | None = None) -> T: ...

    async def async_get_or_init(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """``get_or_init`` from async code (asyncio or trio): the value; if the cell is empty,
        run ``fn()`` once, across racing threads and tasks, to set it. *fn* may be sync or
        async: what it returns is awaited if it is awaitable (an ``async def`` initialiser
        runs on the caller's loop; ``lambda: dm.run_in_worker(cpu_bound)`` runs a CPU-bound
        one on the backend's workers). A sync *fn* runs on the loop, as a plain call would.

        While another thread or task runs its initialiser, the task waits without blocking
        its loop, at most *timeout* seconds (None: no limit; negative: ValueError), then
        raises TimeoutError. If *fn* raises, or the task is cancelled while it runs *fn*,
        the cell stays empty, the claim is given up, and the next caller (or a waiter) runs
        its own initialiser; the exception propagates. A task cancelled while it waits has
        claimed nothing. An initialiser that asks for its own cell raises
        :class:`BorrowError`.

        - serial: a cell another task is initialising raises :class:`BorrowError` (no
          timeout: only that task could end the wait) or TimeoutError at once.
        - threads: tasks and threads wait in one FIFO queue; a claim given up goes to the
          first waiter.
        - processes: waits in slices on helper threads; a claim a cancelled task's slice got
          is given up at once. *fn*'s value must pickle.
        """
        check_callable("OnceCell.async_get_or_init", "fn", fn)
        got = await self._async_claim(timeout)
        if got is None:
            raise TimeoutError(
                f"OnceCell.async_get_or_init: another thread or task was still initialising "
                f"the cell after {timeout} s"
            )
        done, value = got
        if done:
            return value
        owner = value  # claimed: who must publish or abandon
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
        except BaseException:  # cancellation included: the claim goes to the next caller
            self._abandon_as(owner)
            raise
        self._publish_as(owner, value)
        return value

    # backend protocol
    @_abstract
    async def _async_claim(self, timeout: float | None) -> tuple[bool, Any] | None:
        """``_claim`` for the calling task: ``(True, value)`` if set; ``(False, owner)`` once
        the task holds the claim (*owner* is what ``_publish_as`` / ``_abandon_as`` take);
        None if *timeout* passed while another caller initialised. Cancelled, it holds no
        claim."""
        raise NotImplementedError

    @_abstract
    def _publish_as(self, owner: Any, value: Any) -> None:
        raise NotImplementedError

    @_abstract
    def _abandon_as(self, owner: Any) -> None:
        raise NotImplementedError

    @_abstract
    def _claim(self) -> tuple[bool, Any]:
        """``(True, value)`` if set; else wait while another caller initialises, then either
        return its value or ``(False, None)``: the caller must now run fn and publish/abandon.
        Raises BorrowError if the calling thread already holds the claim."""
        raise NotImplementedError

    @_abstract
    def _publish(self, value: Any) -> None:
        raise NotImplementedError

    @_abstract
    def _abandon(self) -> None:
        raise NotImplementedError


class AtomicInt(Primitive):
    """An integer updated atomically (``std::sync::atomic``, sequentially consistent).

    - serial: a plain int.
    - parallel: every operation is one indivisible step, exact under any contention; on
      processes the integer lives in the coordinator.
    """

    __slots__ = ()

    def __new__(cls, value: int = 0, *, backend: BackendSpec | None = None) -> AtomicInt:
        return resolve_backend(backend).create_atomic_int(
            _int_argument("AtomicInt", "value", value)
        )

    @_abstract
    def load(self) -> int:
        raise NotImplementedError

    @_abstract
    def store(self, value: int) -> None:
        raise NotImplementedError

    @_abstract
    def swap(self, value: int) -> int:
        """Store *value*; return the previous value."""
        raise NotImplementedError

    @_abstract
    def fetch_add(self, delta: int) -> int:
        """Add *delta*; return the previous value."""
        raise NotImplementedError

    def fetch_sub(self, delta: int) -> int:
        """Subtract *delta*; return the previous value."""
        return self.fetch_add(-delta)

    @_abstract
    def compare_exchange(self, expected: int, new: int) -> int:
        """Store *new* if the value equals *expected*. Returns the value found before the call,
        so the exchange happened exactly when the result equals *expected*."""
        raise NotImplementedError


class WorkerLocal(Primitive):
    """A value per worker (rustc's ``WorkerLocal``), made by ``factory()`` on first ``get()``.

    - serial: one value.
    - threads: one value per thread that called ``get()``.
    - processes: one value per process that called ``get()``. ``collect()`` sees a copy of each
      process's value as published at its first ``get()``, after each task the process runs,
      and when the process exits, so ``factory`` and the values must pickle.
    """

    __slots__ = ()

    def __new__(
        cls, factory: Callable[[], Any], *, backend: BackendSpec | None = None
    ) -> WorkerLocal:
        chosen = resolve_backend(backend)
        _callable_argument("WorkerLocal", "factory", factory)
        return chosen.create_worker_local(factory)

    @_abstract
    def get(self) -> Any:
        """This worker's value, created by ``factory()`` on first use. BorrowError if
        ``factory`` calls it (the value would be made from itself); a factory that raises
        leaves no value, and the next ``get()`` calls it again."""
        raise NotImplementedError

    @_abstract
    def collect(self) -> list[Any]:
        """Every worker's value, one per worker that called ``get()``, in first-use order."""
        raise NotImplementedError


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

    def __new__(cls, *, backend: BackendSpec | None = None) -> ShardedDict:
        return resolve_backend(backend).create_sharded_dict()

    @_abstract
    def get(self, key: Any, default: Any = None) -> Any:
        raise NotImplementedError

    @_abstract
    def set(self, key: Any, value: Any) -> None:
        raise NotImplementedError

    @_abstract
    def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value for *key*, inserting *default* first if absent (atomically)."""
        raise NotImplementedError

    @_abstract
    def pop(self, key: Any, default: Any = MISSING) -> Any:
        """Remove *key* and return its value; *default* (or KeyError) when absent."""
        raise NotImplementedError

    @_abstract
    def __len__(self) -> int:
        raise NotImplementedError

    @_abstract
    def items(self) -> list[tuple[Any, Any]]:
        """A snapshot of the entries, in no particular order."""
        raise NotImplementedError

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

    def __new__(cls, value: Any = None, *, backend: BackendSpec | None = None) -> FreezeLock:
        return resolve_backend(backend).create_freeze_lock(value)

    @_abstract
    def read(self) -> Any:
        raise NotImplementedError

    @_abstract
    def freeze(self) -> Any:
        raise NotImplementedError

    @property
    @_abstract
    def frozen(self) -> bool:
        raise NotImplementedError

    def write(self) -> WriteGuard[Any]:
        """Take the write lock and return its guard; BorrowError if frozen."""
        self._acquire_write()
        return WriteGuard(self)

    async def async_read(self, timeout: float | None = None) -> Any:
        """``read()`` from async code (asyncio or trio): the value, once no writer holds the
        write guard, waiting without blocking the event loop at most *timeout* seconds
        (None: no limit; negative: ValueError), then TimeoutError. Once frozen, it returns
        at once (no lock). Cancelled while it waits, it holds nothing.

        - serial: a live write guard raises :class:`BorrowError` (no timeout), TimeoutError
          at once with one.
        - parallel: waits off the loop, in slices (dualmode/off_loop.py).
        """
        value = await self._async_read(timeout)
        if value is NOT_YET:
            raise TimeoutError(f"could not read the FreezeLock within {timeout} s: it is written")
        return value

    def async_write(self, timeout: float | None = None) -> _AsyncGuard[WriteGuard[Any]]:
        """``write()`` from async code (asyncio or trio), without blocking the event loop:
        ``async with fl.async_write() as g: g.value = ...``, or ``g = await fl.async_write()``
        (then ``g.release()``). Raises :class:`BorrowError` if frozen (also when it froze
        while this writer waited), TimeoutError if *timeout* seconds (None: no limit) pass
        first; cancelled while it waits, it holds nothing.

        - serial: a live write guard raises :class:`BorrowError` (no timeout), TimeoutError
          at once with one.
        - parallel: waits off the loop, in slices (dualmode/off_loop.py).
        """

        async def take() -> WriteGuard[Any]:
            if not await self._async_acquire_write(timeout):
                raise TimeoutError(
                    f"could not write the FreezeLock within {timeout} s: another thread or "
                    "task writes it"
                )
            return WriteGuard(self)

        return _AsyncGuard(take)

    # backend protocol, with defaults
    async def _async_read(self, timeout: float | None) -> Any:
        """The value, or NOT_YET once *timeout* passed. By default ``_read_for(0)`` first, on
        the loop (frozen or not written: no helper thread), then slices of ``_read_for`` off
        the loop."""
        async_timeout(timeout)
        value = self._read_for(0)
        if value is NOT_YET and timeout != 0:
            value = await get_off_loop(self._read_for, None, timeout)
        return value

    async def _async_acquire_write(self, timeout: float | None) -> bool:
        """Take the write lock from async code: True, or False once *timeout* passed. By
        default ``_acquire_write_for(0)`` first, on the loop, then slices of it off the loop
        (a slice that got the lock after a cancellation lets it go)."""
        async_timeout(timeout)
        if self._acquire_write_for(0):
            return True
        if timeout == 0:
            return False
        return await wait_off_loop(self._acquire_write_for, self._release_write, timeout)

    def _read_for(self, seconds: float) -> Any:
        """The value, waiting at most *seconds* for a writer; NOT_YET if it did not end."""
        raise NotImplementedError(
            f"{type(self).__qualname__} defines neither _async_read nor _read_for"
        )

    def _acquire_write_for(self, seconds: float) -> bool:
        """Take the write lock, waiting at most *seconds*; BorrowError if frozen."""
        raise NotImplementedError(
            f"{type(self).__qualname__} defines neither _async_acquire_write nor _acquire_write_for"
        )

    # backend protocol
    @_abstract
    def _acquire_write(self) -> None:
        raise NotImplementedError

    @_abstract
    def _release_write(self) -> None:
        raise NotImplementedError

    @_abstract
    def _load(self) -> Any:
        raise NotImplementedError

    @_abstract
    def _store(self, value: Any) -> None:
        raise NotImplementedError


class Queue(Primitive):
    """A FIFO queue, ``queue.Queue``-compatible, with Python 3.13's ``shutdown``.

    Raises ``queue.Empty``/``queue.Full`` like ``queue.Queue`` and
    :data:`dualmode.QueueShutDown` after ``shutdown()``.

    - serial: a deque. A ``get`` on an empty queue (or ``put`` on a full one, or ``join`` with
      unfinished tasks) that would block with no timeout raises :class:`BorrowError`; with a
      timeout it raises Empty/Full at once.
    - parallel: blocking calls wait; on processes the queue lives in the coordinator.

    ``maxsize`` is the bound (<= 0: none), as ``queue.Queue``'s attribute: it may be changed.
    ``unfinished_tasks`` and ``is_shutdown`` read as ``queue.Queue``'s do.
    """

    __slots__ = ()
    maxsize: int

    def __new__(cls, maxsize: int = 0, *, backend: BackendSpec | None = None) -> Queue:
        return resolve_backend(backend).create_queue(_int_argument("Queue", "maxsize", maxsize))

    @_abstract
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        raise NotImplementedError

    @_abstract
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        raise NotImplementedError

    async def async_put(self, item: Any, timeout: float | None = None) -> None:
        """``put`` from async code (asyncio or trio), without blocking the event loop: waits
        for room as long as *timeout* seconds allow (None: no limit), then raises
        ``queue.Full``; :data:`dualmode.QueueShutDown` once shut down.

        - serial: a full queue raises :class:`BorrowError` (no timeout) or Full at once.
        - threads: a task and a thread waiting for room are served in the order they came;
          a cancelled put has put nothing.
        - processes: waits in slices on a helper thread; a put cancelled in the instant its
          slice put the item has put it.
        """

        def attempt(seconds: float) -> Any:
            try:
                self.put(item, True, seconds)
            except Full:
                return NOT_YET
            return True

        if await get_off_loop(attempt, None, timeout) is NOT_YET:
            raise Full

    async def async_get(self, timeout: float | None = None) -> Any:
        """``get`` from async code (asyncio or trio), without blocking the event loop: the
        next item, waiting as long as *timeout* seconds allow (None: no limit), then raises
        ``queue.Empty``; :data:`dualmode.QueueShutDown` once shut down and empty.

        - serial: an empty queue raises :class:`BorrowError` (no timeout) or Empty at once.
        - threads: tasks and threads waiting for items are served in the order they came; a
          cancelled get has taken nothing (the item it was offered goes to the next getter).
        - processes: waits in slices on a helper thread; an item a cancelled get's slice took
          is put back (at the end of the queue).
        """

        def attempt(seconds: float) -> Any:
            try:
                return self.get(True, seconds)
            except Empty:
                return NOT_YET

        item = await get_off_loop(attempt, self.put, timeout)
        if item is NOT_YET:
            raise Empty
        return item

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    @_abstract
    def qsize(self) -> int:
        raise NotImplementedError

    def empty(self) -> bool:
        return self.qsize() == 0

    @_abstract
    def full(self) -> bool:
        raise NotImplementedError

    @_abstract
    def task_done(self) -> None:
        """Mark one fetched item done; ValueError if called more times than items were put."""
        raise NotImplementedError

    @_abstract
    def join(self) -> None:
        """Wait until every item put has been marked done."""
        raise NotImplementedError

    @_abstract
    def shutdown(self, immediate: bool = False) -> None:
        """Refuse new puts; with *immediate*, also drop queued items and wake all getters."""
        raise NotImplementedError


def raise_frozen() -> NoReturn:
    raise BorrowError("this FreezeLock is frozen: its value can no longer be written")


def raise_factory_reentered() -> NoReturn:
    """A WorkerLocal's factory asked for the value it is making (on every backend)."""
    raise BorrowError(
        "WorkerLocal: the factory called get() on its own WorkerLocal; make the value "
        "without asking for it"
    )
