"""The coordinator process: it hosts every primitive of one ProcessesBackend.

It is a manager server (started with ``spawn`` by the owning backend) whose hosted objects are
the :mod:`threads backend <dualmode.backends.threads>`'s classes, so there is one implementation
of the synchronization logic; :class:`Coordinator` keeps the reference counts of all of them.
See docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dualmode.off_loop import NOT_YET
from dualmode.watchdog import Watchdog, sited

from .. import threads
from . import link, mp_internals, primitives
from .primitives import ABSENT

__all__ = ["Coordinator", "Manager", "init_coordinator"]


class Coordinator:
    """Reference bookkeeping in the coordinator process, hosted at ident ``COORDINATOR_ID``.

    Every count goes through here, over the caller's persistent connection: one round trip
    instead of the stdlib proxies' new connection per incref, and pins make handing a
    reference to another process (pickling) safe even if the sender drops its copy first.
    """

    exposed = ("adopt", "create", "decref_many", "info", "pin")

    def __init__(self, server: mp_internals.HostingServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._serials: dict[str, int] = {}
        self._pins: dict[int, str] = {}
        self._counter = itertools.count(1)

    def _drain_local(self) -> None:
        # References that died in this process (values inside hosted objects) queue up here.
        local = link.local_link(self._server.address)
        if local is not None and local.dead:
            self._release(local.take_dead())

    def _check(self, ident: str, serial: int) -> None:
        if self._serials.get(ident) != serial:
            raise ReferenceError(
                "this dualmode primitive was freed: every reference to it was dropped before "
                "this copy was unpickled (a pickle may be loaded again only while another copy "
                "keeps the object alive)"
            )

    def create(
        self, typeid: str, args: tuple[Any, ...], site: str | None = None
    ) -> tuple[str, int]:
        self._drain_local()
        with self._lock, sited(site):
            ident = self._server.host(typeid, args)  # refcount 1: the caller's
            serial = self._serials[ident] = next(self._counter)
        return ident, serial

    def pin(self, ident: str, serial: int) -> int:
        self._drain_local()
        with self._lock:
            self._check(ident, serial)
            self._server.add_ref(ident)
            pin = next(self._counter)
            self._pins[pin] = ident
        return pin

    def adopt(self, pin: int, ident: str, serial: int) -> None:
        self._drain_local()
        with self._lock:
            if self._pins.pop(pin, None) == ident:
                return  # the pin's reference becomes the loader's
            self._check(ident, serial)  # loaded again: a fresh reference, if still alive
            self._server.add_ref(ident)

    def decref_many(self, idents: list[str]) -> None:
        self._drain_local()
        self._release(idents)

    def _release(self, idents: list[str]) -> None:
        with self._lock:
            for ident in idents:
                if self._server.drop_ref(ident):
                    self._serials.pop(ident, None)

    def info(self) -> dict[str, int]:
        """The coordinator's pid and how many objects it hosts (for diagnostics and tests)."""
        self._drain_local()
        with self._lock:
            return {"pid": os.getpid(), "objects": len(self._serials)}


class _CoordinatorServer(mp_internals.HostingServer):
    """The coordinator's server: the bookkeeping object at ``COORDINATOR_ID``."""

    keeper_ident = link.COORDINATOR_ID

    def make_keeper(self) -> tuple[object, Iterable[str]]:
        global _server
        _server = self
        coordinator = Coordinator(self)
        link.host_link(self.address, coordinator)
        return coordinator, Coordinator.exposed


_server: _CoordinatorServer | None = None  # set in the coordinator process


class Manager(mp_internals.HostingManager, server=_CoordinatorServer):
    """Starts the coordinator process (``start(init_coordinator)``) and stops it."""


def init_coordinator(watchdog: float | None = None) -> None:
    """First code in the coordinator process: exit when the owning process is gone.
    *watchdog*: the owning backend's limit, for the waits of the objects hosted here."""
    global _watchdog
    _watchdog = watchdog
    mp_internals.exit_with_parent("dualmode-owner-watch")


# -- the hosted objects ---------------------------------------------------------------------

# The coordinator builds hosted objects with one threads backend of its own.
_hosting: threads.ThreadsBackend | None = None
_hosting_lock = threading.Lock()
_watchdog: float | None = None


def _hosting_backend() -> threads.ThreadsBackend:
    global _hosting
    with _hosting_lock:
        if _hosting is None:
            _hosting = threads.ThreadsBackend()
            if _watchdog is not None:
                # Here, where every holder and waiter of a hosted object is seen, the
                # watchdog finds cycles; not stalls: the clients may still act. It stops
                # with this process (a daemon thread).
                _hosting.watcher = Watchdog(_watchdog, stalls=False, describe=client_named)
        return _hosting


def client_named(name: str) -> str:
    """A client thread, from the name of the coordinator's thread that serves it
    (``link.Link._connection``: "process (pid N)", then "|thread" but for a main thread)."""
    process, _, thread = name.partition("|")
    return f"thread {thread!r} of {process}" if thread else f"the main thread of {process}"


class _HostedFreezeLock(threads.FreezeLock):
    """The threads FreezeLock, plus the two queries a client cache needs (one round trip each)."""

    def _read_frozen(self, seconds: float = -1) -> tuple[bool, Any]:
        """``read()``, and whether the value was frozen before it: then it is final. With
        *seconds*, ``_read_for(seconds)``: its NOT_YET travels as an ``(False, ABSENT)``."""
        frozen = self.frozen
        value = self._read_for(seconds)
        return frozen, ABSENT if value is NOT_YET else value

    def _is_frozen(self) -> bool:
        return self.frozen  # a property: the coordinator calls methods only


class _WorkerLocalStore:
    """What the coordinator keeps for a WorkerLocal: the factory and each process's copy.

    Both stay pickled bytes here, so the coordinator never imports the user's classes.
    """

    def __init__(self, factory: bytes) -> None:
        self._factory = factory
        self._values: dict[str, bytes] = {}  # process key -> value; dicts keep first-use order
        self._lock = threading.Lock()

    def factory(self) -> bytes:
        return self._factory

    def publish(self, key: str, value: bytes) -> None:
        with self._lock:
            self._values[key] = value

    def collect(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._values.items())


def _host_condition(lock_ident: str | None) -> threads.Condition:
    # The client checked that lock_ident names a Lock or RLock hosted here; use the object
    # itself, so the condition and direct use of the lock share one real lock.
    lock: Any = None
    if lock_ident is not None:
        assert _server is not None  # this runs in the coordinator
        lock = _server.hosted(lock_ident)
    return threads.Condition(_hosting_backend(), lock)


def _host(typeid: str, *args: Any) -> object:
    """Build the hosted object for *typeid* (runs in the coordinator, from Server.create)."""
    if typeid == "WorkerLocal":
        return _WorkerLocalStore(*args)
    if typeid == "Condition":
        return _host_condition(*args)
    if typeid == "FreezeLock":
        return _HostedFreezeLock(_hosting_backend(), *args)
    if typeid == "Lock":  # the factory's: one that records its holder for the watchdog
        return _hosting_backend().create_lock()
    cls: Callable[..., object] = getattr(threads, typeid)
    return cls(_hosting_backend(), *args)


# The client class of each hosted type says which methods clients may call on it.
_CLIENT_CLASSES: tuple[type[primitives.Hosted], ...] = (
    primitives.Lock,
    primitives.RLock,
    primitives.Semaphore,
    primitives.BoundedSemaphore,
    primitives.Event,
    primitives.Condition,
    primitives.Barrier,
    primitives.RwLock,
    primitives.Mutex,
    primitives.OnceCell,
    primitives.AtomicInt,
    primitives.WorkerLocal,
    primitives.ShardedDict,
    primitives.FreezeLock,
    primitives.Queue,
)
for _cls in _CLIENT_CLASSES:
    Manager.register(
        _cls.__name__,
        callable=functools.partial(_host, _cls.__name__),
        exposed=_cls.exposed,
        create_method=False,
    )
