"""The client classes of the processes backend: one per public primitive.

Each forwards its methods to the object the coordinator hosts for it (a threads-backend object
there), one round trip per call, through this process's :class:`~.link.Link`. They pickle by
reference to the hosted object, so every process started from the creating one can use them.
See docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import threading
import weakref
from collections.abc import Callable
from types import FunctionType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import cloudpickle  # type: ignore[import-untyped]

import dualmode.primitives as p
from dualmode.errors import BorrowError
from dualmode.off_loop import NOT_YET, async_timeout, get_off_loop, wait_aside, wait_off_loop
from dualmode.parking_lot import current_task

from . import mp_internals
from .link import Ref, link_for

if TYPE_CHECKING:
    from .backend import ProcessesBackend

__all__ = [
    "ABSENT",
    "AtomicInt",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "FreezeLock",
    "Hosted",
    "Lock",
    "Mutex",
    "OnceCell",
    "Queue",
    "RLock",
    "RwLock",
    "Semaphore",
    "ShardedDict",
    "WorkerLocal",
    "publish_all",
    "remote",
]

H = TypeVar("H", bound="Hosted")
T = TypeVar("T")


class _Absent:
    """A marker that survives pickling as itself (``default`` arguments never travel)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "ABSENT"  # this module's global of that name

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()

_remote_names: dict[Callable[..., Any], str] = {}


def _remote_name(value: object) -> str | None:
    """The hosted method a class attribute forwards to, if it is a ``remote`` forwarder."""
    return _remote_names.get(value) if isinstance(value, FunctionType) else None


def remote(name: str) -> Callable[..., Any]:
    """A method that runs ``name`` on the hosted object: one round trip."""

    def forward(self: Hosted, *args: Any, **kwargs: Any) -> Any:
        return self._ref.link.call(self._ref.ident, name, args, kwargs)

    _remote_names[forward] = name
    return forward


class Hosted(p.Primitive):
    """Base of the client classes: a counted reference to an object in the coordinator.

    ``exposed`` (derived from the ``remote`` methods, plus ``extra_exposed``) is the exact list
    of methods the coordinator lets clients call on the hosted object.
    """

    __slots__ = ("__weakref__", "_ref")
    exposed: ClassVar[tuple[str, ...]] = ()
    extra_exposed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ref: Ref) -> None:
        self._ref = ref

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = set(cls.extra_exposed)
        for klass in cls.__mro__:
            for attr, value in vars(klass).items():
                if _remote_name(value) == attr:
                    names.add(attr)
        cls.exposed = tuple(sorted(names))
        if cls.__doc__ is None:  # help() shows the public class's contract
            cls.__doc__ = next((k.__doc__ for k in cls.__mro__ if k.__module__ == p.__name__), None)
        # Forwarders show the public method's name, signature and docstring.
        for attr, value in vars(cls).items():
            if _remote_name(value) == attr:
                public = next(
                    (
                        vars(k)[attr]
                        for k in cls.__mro__
                        if k.__module__ == p.__name__ and attr in vars(k)
                    ),
                    None,
                )
                value.__name__ = attr
                value.__qualname__ = f"{cls.__qualname__}.{attr}"
                if public is not None:
                    value.__doc__ = public.__doc__
                    value.__wrapped__ = public

    @property
    def backend(self) -> ProcessesBackend:
        """The owning ProcessesBackend; in another process, a handle to the same coordinator."""
        return self._ref.link.backend()

    def __reduce__(self) -> tuple[Any, ...]:
        ref = self._ref
        link = ref.link
        pin = link.pin(ref.ident, ref.serial)
        return _rebuild, (
            type(self),
            link.address,
            link.pid,
            link.workers,
            ref.ident,
            ref.serial,
            pin,
        )

    def __repr__(self) -> str:
        return (
            f"<dualmode.backends.processes.{type(self).__name__} {self._ref.ident} "
            f"in coordinator pid {self._ref.link.pid}>"
        )


def _rebuild(
    cls: type[H], address: Any, pid: int, workers: int | None, ident: str, serial: int, pin: int
) -> H:
    """Unpickle a client object: adopt the reference its pickle carries."""
    return cls(link_for(address, pid, workers).adopt(pin, ident, serial))


class Lock(Hosted, p.Lock):
    __slots__ = ()
    acquire = remote("acquire")
    release = remote("release")
    locked = remote("locked")


def _owner() -> tuple[str, int] | None:
    """Who owns what the caller takes (an RLock, a Condition's lock, a OnceCell's claim), as
    the coordinator is told: None for a thread (the coordinator's thread that serves it stands
    for it, as for any call), a token of its own for a task, so that two tasks of one thread
    are told apart and helper threads can act for a task."""
    task = current_task()
    if task is None:
        return None
    with _task_tokens_lock:
        token = _task_tokens.get(task)
        if token is None:
            token = _task_tokens[task] = (_process_key(), next(_task_serials))
    return token


_task_tokens: weakref.WeakKeyDictionary[object, tuple[str, int]] = weakref.WeakKeyDictionary()
_task_tokens_lock = threading.Lock()
_task_serials = itertools.count()
# (task token, cell ident) for each OnceCell whose initialiser a task of this process runs.
_initialising: set[tuple[tuple[str, int], str]] = set()
_initialising_lock = threading.Lock()


class _OwnedLock(Hosted):
    """``acquire`` and ``release`` name their owner (see :func:`_owner`); a task's
    ``async_acquire`` waits in slices (dualmode/off_loop.py) that act for it."""

    __slots__ = ()
    extra_exposed: ClassVar[tuple[str, ...]] = ("_acquire_as", "_release_as")

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._ref.call("_acquire_as", (_owner(), blocking, timeout)))

    def release(self) -> None:
        self._ref.call("_release_as", (_owner(),))

    async def async_acquire(self, timeout: float | None = None) -> bool:
        owner = _owner()
        limit = async_timeout(timeout)
        # Free, or the task's own (re-entered): one round trip, no helper thread.
        if self._ref.call("_acquire_as", (owner, False)):
            return True
        if limit == 0:
            return False
        # The task does not hold it (it would have re-entered above), so a slice that finds
        # the task's token holding it finds a slice of a cancelled wait, about to give it
        # back: it waits rather than re-enter (reenter=False).
        return await wait_off_loop(
            lambda seconds: bool(self._ref.call("_acquire_as", (owner, True, seconds, False))),
            lambda: self._ref.call("_release_as", (owner,)),
            timeout,
        )


class RLock(_OwnedLock, p.RLock):
    __slots__ = ()


class Semaphore(Hosted, p.Semaphore):
    __slots__ = ()
    acquire = remote("acquire")
    release = remote("release")


class BoundedSemaphore(Semaphore, p.BoundedSemaphore):
    __slots__ = ()


class Event(Hosted, p.Event):
    __slots__ = ()
    is_set = remote("is_set")
    set = remote("set")
    clear = remote("clear")
    wait = remote("wait")


class Condition(_OwnedLock, p.Condition):
    __slots__ = ()
    extra_exposed = (
        *_OwnedLock.extra_exposed,
        "_begin_wait",
        "_cancel_wait",
        "_end_wait",
        "_notify_as",
        "_wait_as",
    )

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._ref.call("_wait_as", (_owner(), timeout)))

    def notify(self, n: int = 1) -> None:
        self._ref.call("_notify_as", (_owner(), n))

    def notify_all(self) -> None:
        self._ref.call("_notify_as", (_owner(), -1))

    async def async_wait(self, timeout: float | None = None) -> bool:
        # Not in slices: a notification that came between two would be lost. The wait is
        # queued in the coordinator by one call and waited for by another, both on a helper
        # thread; a cancellation ends it there (dualmode/off_loop.py's wait_aside).
        limit = async_timeout(timeout)
        owner = _owner()
        key = (owner, next(_task_serials))
        call = self._ref.call
        return bool(
            await wait_aside(
                lambda: call("_begin_wait", (owner, key)),
                lambda: call("_end_wait", (key, None if limit == -1 else limit)),
                lambda: call("_cancel_wait", (key,)),
                # Notified as the task was cancelled: the next waiter gets it. The wait
                # took the lock back for the task, so it may notify.
                lambda notified: notified and call("_notify_as", (owner, 1)),
            )
        )


class Barrier(Hosted, p.Barrier):
    __slots__ = ()
    extra_exposed = ("__getattribute__",)  # reads the parties/n_waiting/broken properties
    wait = remote("wait")
    reset = remote("reset")
    abort = remote("abort")

    def _attribute(self, name: str) -> Any:
        return self._ref.call("__getattribute__", (name,))

    @property
    def parties(self) -> int:
        parties: int = self._attribute("parties")
        return parties

    @property
    def n_waiting(self) -> int:
        n_waiting: int = self._attribute("n_waiting")
        return n_waiting

    @property
    def broken(self) -> bool:
        return bool(self._attribute("broken"))


class RwLock(Hosted, p.RwLock):
    __slots__ = ()
    acquire_read = remote("acquire_read")
    release_read = remote("release_read")
    acquire_write = remote("acquire_write")
    release_write = remote("release_write")


class Mutex(Hosted, p.Mutex):
    __slots__ = ()
    _acquire = remote("_acquire")
    _acquire_for = remote("_acquire_for")
    _release = remote("_release")
    _load = remote("_load")
    _store = remote("_store")


class OnceCell(Hosted, p.OnceCell):
    """A task's ``async_get_or_init`` claims for an owner of its own, ``(task token, call
    serial)``: a claim that a cancelled call's slice got (and gives up within a slice) is then
    not taken for a later call of the same task. An initialiser that asks for its own cell,
    which the coordinator can then not tell, is caught here."""

    __slots__ = ()
    set = remote("set")
    extra_exposed = ("_abandon_as", "_claim_as", "_publish_as", "get")

    # The claim's owner is named (see _owner), so that a task's claim is its own.
    def _claim(self) -> tuple[bool, Any]:
        owner = _owner()
        self._check_reentry(owner)
        got: tuple[bool, Any] = self._ref.call("_claim_as", (owner, -1))
        return got

    def _publish(self, value: Any) -> None:
        self._publish_as(_owner(), value)

    def _abandon(self) -> None:
        self._abandon_as(_owner())

    def _check_reentry(self, task: tuple[str, int] | None) -> None:
        if task is not None and (task, self._ref.ident) in _initialising:
            raise BorrowError(
                "OnceCell.async_get_or_init: the initialiser asked for its own cell, which "
                "would wait for itself forever"
            )

    async def _async_claim(self, timeout: float | None) -> tuple[bool, Any] | None:
        task = _owner()
        self._check_reentry(task)
        owner = (task, next(_task_serials))

        def attempt(seconds: float) -> Any:
            got = self._ref.call("_claim_as", (owner, seconds))
            return NOT_YET if got is None else got

        def undo(got: tuple[bool, Any]) -> None:
            if not got[0]:  # a claim its task no longer wants: the next caller's
                self._ref.call("_abandon_as", (owner,))

        got = await get_off_loop(attempt, undo, timeout)
        if got is NOT_YET:
            return None
        if got[0]:
            return got  # type: ignore[no-any-return]
        if task is not None:  # (always, in a task)
            with _initialising_lock:
                _initialising.add((task, self._ref.ident))
        return False, owner

    def _publish_as(self, owner: Any, value: Any) -> None:
        try:
            self._ref.call("_publish_as", (owner, value))
        finally:
            self._claim_ended(owner)

    def _abandon_as(self, owner: Any) -> None:
        try:
            self._ref.call("_abandon_as", (owner,))
        finally:
            self._claim_ended(owner)

    def _claim_ended(self, owner: Any) -> None:
        if owner is not None and isinstance(owner[0], tuple):  # an async call's
            with _initialising_lock:
                _initialising.discard((owner[0], self._ref.ident))

    def get(self, default: Any = None) -> Any:
        """The value if set, else *default* (which stays here: it need not pickle)."""
        value = self._ref.call("get", (ABSENT,))
        return default if value is ABSENT else value


class AtomicInt(Hosted, p.AtomicInt):
    __slots__ = ()
    load = remote("load")
    store = remote("store")
    swap = remote("swap")
    fetch_add = remote("fetch_add")
    compare_exchange = remote("compare_exchange")


class ShardedDict(Hosted, p.ShardedDict):
    __slots__ = ()
    set = remote("set")
    setdefault = remote("setdefault")
    items = remote("items")
    __len__ = remote("__len__")
    __getitem__ = remote("__getitem__")
    __contains__ = remote("__contains__")
    extra_exposed = ("get", "pop")

    def get(self, key: Any, default: Any = None) -> Any:
        """The value for *key*, else *default* (which stays here: it need not pickle)."""
        value = self._ref.call("get", (key, ABSENT))
        return default if value is ABSENT else value

    def pop(self, key: Any, default: Any = p.MISSING) -> Any:
        """Remove *key* and return its value; *default* (or KeyError) when absent."""
        if default is p.MISSING:
            return self._ref.call("pop", (key,))
        value = self._ref.call("pop", (key, ABSENT))
        return default if value is ABSENT else value


class FreezeLock(Hosted, p.FreezeLock):
    """Forwards to the coordinator until frozen; then this copy serves reads from a cache."""

    __slots__ = ("_final",)
    _acquire_write = remote("_acquire_write")
    _acquire_write_for = remote("_acquire_write_for")
    _release_write = remote("_release_write")
    _load = remote("_load")
    _store = remote("_store")
    extra_exposed = ("_is_frozen", "_read_frozen", "freeze")

    def __init__(self, ref: Ref) -> None:
        super().__init__(ref)
        self._final: Any = ABSENT  # the frozen value, once this copy has seen it

    def read(self) -> Any:
        """The value; once frozen, from this copy's cache (no round trip, no lock)."""
        return self._read_for(-1)

    def _read_for(self, seconds: float) -> Any:
        final = self._final
        if final is not ABSENT:
            return final
        frozen, value = self._ref.call("_read_frozen", (seconds,))
        if value is ABSENT:  # a writer held it for the seconds given
            return NOT_YET
        if frozen:
            self._final = value  # a frozen value never changes
        return value

    def freeze(self) -> Any:
        """Make the value read-only (waiting for a live writer) and return it; idempotent."""
        if self._final is ABSENT:
            self._final = self._ref.call("freeze")
        return self._final

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` was called; never waits (not even for a live writer)."""
        return self._final is not ABSENT or bool(self._ref.call("_is_frozen"))


class Queue(Hosted, p.Queue):
    __slots__ = ()
    extra_exposed = ("__getattribute__", "__setattr__")  # maxsize, read and set
    put = remote("put")
    get = remote("get")
    qsize = remote("qsize")
    full = remote("full")
    task_done = remote("task_done")
    join = remote("join")
    shutdown = remote("shutdown")

    @property
    def maxsize(self) -> int:
        """``queue.Queue``'s attribute: the bound (<= 0: none), which may be changed."""
        maxsize: int = self._ref.call("__getattribute__", ("maxsize",))
        return maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self._ref.call("__setattr__", ("maxsize", value))

    @property
    def unfinished_tasks(self) -> int:
        unfinished: int = self._ref.call("__getattribute__", ("unfinished_tasks",))
        return unfinished

    @property
    def is_shutdown(self) -> bool:
        return bool(self._ref.call("__getattribute__", ("is_shutdown",)))


# -- WorkerLocal: one value per process, copies published to the coordinator ------------------


class _LocalState:
    """This process's value of one WorkerLocal (shared by every copy of it in this process)."""

    __slots__ = ("__weakref__", "initialising", "lock", "ready", "ref", "value")

    def __init__(self, ref: Ref) -> None:
        self.ref = ref
        self.lock = threading.RLock()  # reentrant, so a factory asking for itself is reported
        self.initialising = False
        self.ready = False
        self.value: Any = None

    def publish(self) -> None:
        self.ref.call("publish", (_process_key(), cloudpickle.dumps(self.value)))


_local_states: weakref.WeakValueDictionary[tuple[Any, str, int], _LocalState] = (
    weakref.WeakValueDictionary()
)
_local_states_lock = threading.Lock()
_process_token = secrets.token_hex(8)


def _process_key() -> str:
    return f"{os.getpid()}-{_process_token}"


class WorkerLocal(Hosted, p.WorkerLocal):
    """One value per process; the coordinator keeps each process's published copy."""

    __slots__ = ("_factory", "_state")
    extra_exposed = ("collect", "factory", "publish")

    def __init__(self, ref: Ref, factory: Callable[[], Any] | None = None) -> None:
        super().__init__(ref)
        self._factory = factory  # the original, in the creating process
        key = (ref.link.address, ref.ident, ref.serial)
        with _local_states_lock:
            state = _local_states.get(key)
            if state is None:
                state = _local_states[key] = _LocalState(ref)
        self._state = state

    def get(self) -> Any:
        """This process's value, made by ``factory()`` on first use here, then published."""
        state = self._state
        if state.ready:
            return state.value
        with state.lock:
            if state.ready:
                return state.value
            if state.initialising:
                p.raise_factory_reentered()
            factory = self._factory
            if factory is None:
                factory = cloudpickle.loads(self._ref.call("factory"))
            state.initialising = True
            try:
                state.value = factory()
            finally:
                state.initialising = False
            state.ready = True
            state.publish()
        return state.value

    def collect(self) -> list[Any]:
        """One value per process that called ``get()``, in first-use order.

        This process's entry is its live value; the others are copies as last published (at
        first ``get()``, after each task a pool worker runs, and at process exit).
        """
        me, state = _process_key(), self._state
        published: list[tuple[str, bytes]] = self._ref.call("collect")  # in first-use order
        return [
            state.value if key == me and state.ready else cloudpickle.loads(blob)
            for key, blob in published
        ]


def publish_all(*, at_exit: bool = False) -> None:
    """Publish this process's value of every WorkerLocal it has used.

    A worker pool calls this after each task; exit runs it too (then quietly, skipping
    coordinators this process owns, which stop at exit anyway).
    """
    with _local_states_lock:
        states = [s for s in _local_states.values() if s.ready]
    for state in states:
        if at_exit:
            if state.ref.link.owner is not None or state.ref.link.gone is not None:
                continue
            try:
                state.publish()
            except Exception as exc:  # exiting: the coordinator may already be gone
                mp_internals.debug("dualmode: publishing a WorkerLocal at exit failed: %r", exc)
        else:
            state.publish()


def _after_os_fork() -> None:
    # A forked child has its own WorkerLocal values, and its own key for publishing them.
    global _process_token, _local_states_lock
    _process_token = secrets.token_hex(8)
    _local_states_lock = threading.Lock()
    for state in list(_local_states.values()):
        state.lock = threading.RLock()
        state.initialising = state.ready = False
        state.value = None


# Before the references are given back (priority 5) and the manager shuts down (0).
_EXIT_HOOK = mp_internals.ExitHook(functools.partial(publish_all, at_exit=True), priority=20)
os.register_at_fork(after_in_child=_after_os_fork)
