"""The processes backend: primitives hosted by one coordinator process, usable from any process.

Each :class:`ProcessesBackend` starts one *coordinator* (a :mod:`multiprocessing.managers`
server, started with ``spawn``) on its first primitive. The coordinator holds the real objects,
which are the :mod:`threads backend <dualmode.backends.threads>`'s classes, so there is one
implementation of the synchronization logic; the classes here are thin clients that forward
each method call to it. Guarantees:

- **One round trip per operation.** ``counter.fetch_add(1)`` is one request and one reply over
  a Unix socket; ``with m.lock() as g: g.value += 1`` is four. Every operation is as atomic as
  on the threads backend, whichever process calls it.
- **Any process can use them.** A primitive pickles (as a ``multiprocessing`` Process argument,
  a queue item, a task argument...) and works in every process started from the creating one
  (spawn, forkserver or fork) or from its descendants: they inherit its ``authkey``, which the
  coordinator requires. A process holding a copy keeps the object alive; the coordinator frees
  it when the last copy anywhere is gone (a pickle that is never loaded keeps it until close).
- **Ownership is per thread.** Each client thread talks to the coordinator over its own
  connection, served by its own server thread, so an RLock, a Condition or a OnceCell claim is
  owned by the calling thread of the calling process, as on the threads backend.
- **Values travel by pickle.** Values stored in a Mutex, Queue, OnceCell... must pickle
  (standard pickle); a ``WorkerLocal`` factory, its values and a Barrier ``action`` travel with
  cloudpickle, so lambdas work. A Barrier's action runs in the coordinator process.
- **Errors keep their type.** An exception raised by the hosted object is raised in the caller
  (BrokenBarrierError, queue.Empty/Full, QueueShutDown, BorrowError, ValueError...). If the
  coordinator is gone (killed, crashed, or its backend closed), calls raise
  :class:`~dualmode.WorkerCrashed` saying so.
- **Nothing is left behind.** :meth:`ProcessesBackend.close` stops the coordinator and reaps
  it; so does interpreter exit of the creating process; and the coordinator exits by itself
  when the creating process dies without cleaning up (even ``kill -9``).

Limits: a process killed while it holds a lock or a OnceCell claim, or while it waits for
one, may leave it held (the coordinator completes the wait for a client that is gone), much as
a killed thread would. An object inherited through ``fork`` (not pickled) is borrowed: usable,
but only pickled or created copies keep the hosted object alive.
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import os
import secrets
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import AuthenticationError, connection, current_process, get_context, util
from multiprocessing.managers import BaseManager, RemoteError, Server
from multiprocessing.process import BaseProcess, parent_process
from multiprocessing.reduction import ForkingPickler
from types import FunctionType
from typing import Any, ClassVar, TypeVar, cast

import cloudpickle  # type: ignore[import-untyped]

import dualmode.primitives as p
from dualmode import job_table
from dualmode.backend import Backend, Outcome, capture, run_chunk, run_now
from dualmode.errors import BorrowError, WorkerCrashed
from dualmode.job_table import ERROR, ERROR_ONCE, OK, Memo

from . import threads

__all__ = ["ProcessesBackend"]

H = TypeVar("H", bound="_Hosted")
T = TypeVar("T")

_COORDINATOR_ID = "dualmode-coordinator"  # the ident of the bookkeeping object in the server
_SHUTDOWN_TIMEOUT = 5.0  # seconds the coordinator gets to stop before it is terminated
# How long broadcast's copies wait for every worker to take one (a busy pool is slow to).
_BROADCAST_TIMEOUT = 120.0


class _Absent:
    """A marker that survives pickling as itself (``default`` arguments never travel)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "_ABSENT"

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


class _ByValue:
    """Pickles *obj* with cloudpickle inside a standard pickle; loads as *obj* itself."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, ...]:
        return cloudpickle.loads, (cloudpickle.dumps(self.obj),)


# ---------------------------------------------------------------------------------------------
# Client side: the link from this process to one coordinator
# ---------------------------------------------------------------------------------------------


def _reply_error(kind: str, result: Any) -> BaseException:
    """The exception a server reply of *kind* stands for (as multiprocessing.managers does)."""
    if kind == "#ERROR" and isinstance(result, BaseException):
        return result  # raised by the hosted object: its own type and arguments
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        return RemoteError(f"{kind[1:].lower()} in the dualmode coordinator: {result}")
    return RemoteError(f"unexpected reply from the dualmode coordinator: {kind!r} {result!r}")


class _Link:
    """This process's connection to one coordinator, shared by every primitive it hosts.

    Each thread gets its own connection (a server thread serves exactly one client thread, which
    is what makes lock ownership per thread). The link also counts the references this process
    holds, so they can be released when objects die and when the process exits.
    """

    def __init__(
        self,
        address: Any,
        pid: int,
        workers: int | None,
        local: _Coordinator | None = None,
    ) -> None:
        self.address = address
        self.pid = pid  # the coordinator's
        self.workers = workers
        self.owner: ProcessesBackend | None = None  # set in the process that owns the coordinator
        self.gone: str | None = None  # why the coordinator can no longer be used, once known
        self._local = local  # the coordinator object itself, in the coordinator process
        self._handle: ProcessesBackend | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget connections and references: a forked child owns none of its parent's."""
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._owned: collections.Counter[str] = collections.Counter()
        # Idents of dead references. Finalizers only append here (they may run inside any
        # operation, even one holding a lock); the next request sends them.
        self._dead: collections.deque[str] = collections.deque()
        self._exited = False

    def backend(self) -> ProcessesBackend:
        """The owning backend here, else a handle to the same coordinator (made once)."""
        if self.owner is not None:
            return self.owner
        with self._lock:
            if self._handle is None:
                self._handle = ProcessesBackend._handle(self)
            return self._handle

    # -- requests ------------------------------------------------------------------------------

    def call(self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``method(*args, **kwargs)`` on hosted object *ident*; return or raise its outcome."""
        if self._dead:
            dead = self._take_dead()
            if dead:
                self._request(_COORDINATOR_ID, "decref_many", (dead,), {})
        return self._request(ident, method, args, kwargs)

    def _request(
        self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.gone is not None:
            raise WorkerCrashed(self._gone_message(self.gone))
        # Pickle before touching the connection: an argument that does not pickle must not
        # leave this thread's connection (and so its lock ownership) in a broken state.
        buffer = io.BytesIO()
        ForkingPickler(buffer).dump((ident, method, args, kwargs))
        # bytes, not dumps()'s memoryview: a frame kept by a traceback must not pin an export
        # of the BytesIO (collecting such a cycle raises BufferError on 3.13t).
        data = buffer.getvalue()
        conn = self._connection()
        tls = self._tls
        if getattr(tls, "busy", False):
            # Only a signal handler can get here: a nested exchange would garble the stream.
            raise RuntimeError(
                "a processes-backend primitive was used from a signal handler while this "
                "thread was waiting for the coordinator; defer the call out of the handler"
            )
        tls.busy = True
        try:
            conn.send_bytes(data)
            reply = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._drop(conn)
            raise self._crashed(exc) from exc
        except BaseException:
            self._drop(conn)  # interrupted mid-exchange: the stream is out of step
            raise
        finally:
            tls.busy = False
        kind, result = ForkingPickler.loads(reply)
        if kind == "#RETURN":
            return result
        raise _reply_error(kind, result)

    def _connection(self) -> connection.Connection:
        conn: connection.Connection | None = getattr(self._tls, "conn", None)
        if conn is not None:
            return conn
        name = current_process().name
        if threading.current_thread() is not threading.main_thread():
            name += "|" + threading.current_thread().name
        try:
            conn = connection.Client(self.address, authkey=bytes(current_process().authkey))
            conn.send((None, "accept_connection", (name,), {}))
            kind, result = conn.recv()
        except (EOFError, OSError) as exc:
            raise self._crashed(exc) from exc
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"this process may not use the dualmode coordinator at {self.address!r}: its "
                "authkey differs. Only processes started from the process that created the "
                "backend (or from their descendants) inherit the key."
            ) from exc
        if kind != "#RETURN":
            raise _reply_error(kind, result)
        self._tls.conn = conn
        return conn

    def _drop(self, conn: connection.Connection) -> None:
        self._tls.conn = None
        conn.close()

    def _coordinator(self, method: str, *args: Any) -> Any:
        """Call the coordinator's bookkeeping object; directly when this process hosts it."""
        if self._local is not None:
            return getattr(self._local, method)(*args)
        return self.call(_COORDINATOR_ID, method, args, {})

    # -- failures ------------------------------------------------------------------------------

    def _gone_message(self, reason: str) -> str:
        return (
            f"the dualmode coordinator process (pid {self.pid}) that hosts this primitive is "
            f"gone: {reason}; every primitive it hosted is lost"
        )

    def _crashed(self, exc: BaseException) -> WorkerCrashed:
        reason = self.gone
        if reason is None and self.owner is not None:
            reason = self.owner._coordinator_fate()
        if reason is None:
            reason = "it died, was killed, or its backend was closed by the process that owns it"
        return WorkerCrashed(f"{self._gone_message(reason)} ({type(exc).__name__}: {exc})")

    # -- reference counting --------------------------------------------------------------------

    def create(self, typeid: str, args: tuple[Any, ...]) -> _Ref:
        """Host a new object of *typeid* built from *args*; return this process's reference."""
        ident, serial = self._coordinator("create", typeid, args)
        return self._ref(ident, serial)

    def pin(self, ident: str, serial: int) -> int:
        """Take a reference for a pickled copy to carry; whoever loads it adopts it."""
        pin: int = self._coordinator("pin", ident, serial)
        return pin

    def adopt(self, pin: int, ident: str, serial: int) -> _Ref:
        """Take over the reference a pickled copy carries (or a new one if it was taken)."""
        self._coordinator("adopt", pin, ident, serial)
        return self._ref(ident, serial)

    def _ref(self, ident: str, serial: int) -> _Ref:
        with self._lock:
            self._owned[ident] += 1
        ref = _Ref(self, ident, serial)
        finalizer = weakref.finalize(ref, self._release, ident, os.getpid())
        finalizer.atexit = False  # exit is handled by _release_all_at_exit
        return ref

    def _release(self, ident: str, pid: int) -> None:
        # Runs when a reference dies, in any thread, possibly inside any operation: only queue.
        if pid == os.getpid() and not self._exited:
            self._dead.append(ident)

    def _take_dead(self) -> list[str]:
        dead: list[str] = []
        while self._dead:
            try:
                dead.append(self._dead.popleft())
            except IndexError:  # another thread took the last one
                break
        with self._lock:
            for ident in dead:
                self._owned[ident] -= 1
            self._owned += collections.Counter()  # drop zero counts
        return dead

    def release_all_at_exit(self) -> None:
        """Give back every reference this process holds (it is exiting)."""
        with self._lock:
            self._exited = True
            held = list(self._owned.elements())
            self._owned.clear()
            self._dead.clear()
        if held and self.gone is None and self._local is None:
            self._coordinator("decref_many", held)


class _Ref:
    """One counted reference, held by one client object, to hosted object *ident*."""

    __slots__ = ("__weakref__", "ident", "link", "serial")

    def __init__(self, link: _Link, ident: str, serial: int) -> None:
        self.link = link
        self.ident = ident
        self.serial = serial  # tells this object from a later one that reuses its ident

    def call(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        return self.link.call(self.ident, method, args, kwargs or {})


_links: dict[Any, _Link] = {}
_links_lock = threading.Lock()


def _link_for(address: Any, pid: int, workers: int | None) -> _Link:
    with _links_lock:
        link = _links.get(address)
        if link is None:
            link = _links[address] = _Link(address, pid, workers)
        return link


def _forget_link(link: _Link) -> None:
    with _links_lock:
        if _links.get(link.address) is link:
            del _links[link.address]


# ---------------------------------------------------------------------------------------------
# Client classes: one per public primitive, forwarding to the hosted threads-backend object
# ---------------------------------------------------------------------------------------------

_remote_names: dict[Callable[..., Any], str] = {}


def _remote_name(value: object) -> str | None:
    """The hosted method a class attribute forwards to, if it is a ``_remote`` forwarder."""
    return _remote_names.get(value) if isinstance(value, FunctionType) else None


def _remote(name: str) -> Callable[..., Any]:
    """A method that runs ``name`` on the hosted object: one round trip."""

    def forward(self: _Hosted, *args: Any, **kwargs: Any) -> Any:
        return self._ref.link.call(self._ref.ident, name, args, kwargs)

    _remote_names[forward] = name
    return forward


class _Hosted(p.Primitive):
    """Base of the client classes: a counted reference to an object in the coordinator.

    ``exposed`` (derived from the ``_remote`` methods, plus ``extra_exposed``) is the exact list
    of methods the coordinator lets clients call on the hosted object.
    """

    __slots__ = ("__weakref__", "_ref")
    exposed: ClassVar[tuple[str, ...]] = ()
    extra_exposed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ref: _Ref) -> None:
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
    return cls(_link_for(address, pid, workers).adopt(pin, ident, serial))


class Lock(_Hosted, p.Lock):
    __slots__ = ()
    acquire = _remote("acquire")
    release = _remote("release")
    locked = _remote("locked")


class RLock(_Hosted, p.RLock):
    __slots__ = ()
    acquire = _remote("acquire")
    release = _remote("release")


class Semaphore(_Hosted, p.Semaphore):
    __slots__ = ()
    acquire = _remote("acquire")
    release = _remote("release")


class BoundedSemaphore(Semaphore, p.BoundedSemaphore):
    __slots__ = ()


class Event(_Hosted, p.Event):
    __slots__ = ()
    is_set = _remote("is_set")
    set = _remote("set")
    clear = _remote("clear")
    wait = _remote("wait")


class Condition(_Hosted, p.Condition):
    __slots__ = ()
    acquire = _remote("acquire")
    release = _remote("release")
    wait = _remote("wait")
    notify = _remote("notify")
    notify_all = _remote("notify_all")

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (it runs here, lock held); its last value.

        As ``threading.Condition.wait_for``: the lock must be held (RuntimeError otherwise).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result


class Barrier(_Hosted, p.Barrier):
    __slots__ = ()
    extra_exposed = ("__getattribute__",)  # reads the parties/n_waiting/broken properties
    wait = _remote("wait")
    reset = _remote("reset")
    abort = _remote("abort")

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


class RwLock(_Hosted, p.RwLock):
    __slots__ = ()
    acquire_read = _remote("acquire_read")
    release_read = _remote("release_read")
    acquire_write = _remote("acquire_write")
    release_write = _remote("release_write")


class Mutex(_Hosted, p.Mutex):
    __slots__ = ()
    _acquire = _remote("_acquire")
    _release = _remote("_release")
    _load = _remote("_load")
    _store = _remote("_store")


class OnceCell(_Hosted, p.OnceCell):
    __slots__ = ()
    set = _remote("set")
    _claim = _remote("_claim")
    _publish = _remote("_publish")
    _abandon = _remote("_abandon")
    extra_exposed = ("get",)

    def get(self, default: Any = None) -> Any:
        """The value if set, else *default* (which stays here: it need not pickle)."""
        value = self._ref.call("get", (_ABSENT,))
        return default if value is _ABSENT else value


class AtomicInt(_Hosted, p.AtomicInt):
    __slots__ = ()
    load = _remote("load")
    store = _remote("store")
    swap = _remote("swap")
    fetch_add = _remote("fetch_add")
    compare_exchange = _remote("compare_exchange")


class ShardedDict(_Hosted, p.ShardedDict):
    __slots__ = ()
    set = _remote("set")
    setdefault = _remote("setdefault")
    items = _remote("items")
    __len__ = _remote("__len__")
    __getitem__ = _remote("__getitem__")
    __contains__ = _remote("__contains__")
    extra_exposed = ("get", "pop")

    def get(self, key: Any, default: Any = None) -> Any:
        """The value for *key*, else *default* (which stays here: it need not pickle)."""
        value = self._ref.call("get", (key, _ABSENT))
        return default if value is _ABSENT else value

    def pop(self, key: Any, default: Any = p.MISSING) -> Any:
        """Remove *key* and return its value; *default* (or KeyError) when absent."""
        if default is p.MISSING:
            return self._ref.call("pop", (key,))
        value = self._ref.call("pop", (key, _ABSENT))
        return default if value is _ABSENT else value


class FreezeLock(_Hosted, p.FreezeLock):
    """Forwards to the coordinator until frozen; then this copy serves reads from a cache."""

    __slots__ = ("_final",)
    _acquire_write = _remote("_acquire_write")
    _release_write = _remote("_release_write")
    _load = _remote("_load")
    _store = _remote("_store")
    extra_exposed = ("_is_frozen", "_read_frozen", "freeze")

    def __init__(self, ref: _Ref) -> None:
        super().__init__(ref)
        self._final: Any = _ABSENT  # the frozen value, once this copy has seen it

    def read(self) -> Any:
        """The value; once frozen, from this copy's cache (no round trip, no lock)."""
        final = self._final
        if final is not _ABSENT:
            return final
        frozen, value = self._ref.call("_read_frozen")
        if frozen:
            self._final = value  # a frozen value never changes
        return value

    def freeze(self) -> Any:
        """Make the value read-only (waiting for a live writer) and return it; idempotent."""
        if self._final is _ABSENT:
            self._final = self._ref.call("freeze")
        return self._final

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` was called; never waits (not even for a live writer)."""
        return self._final is not _ABSENT or bool(self._ref.call("_is_frozen"))


class Queue(_Hosted, p.Queue):
    __slots__ = ()
    put = _remote("put")
    get = _remote("get")
    qsize = _remote("qsize")
    full = _remote("full")
    task_done = _remote("task_done")
    join = _remote("join")
    shutdown = _remote("shutdown")


# -- WorkerLocal: one value per process, copies published to the coordinator ------------------


class _LocalState:
    """This process's value of one WorkerLocal (shared by every copy of it in this process)."""

    __slots__ = ("__weakref__", "initialising", "lock", "ready", "ref", "value")

    def __init__(self, ref: _Ref) -> None:
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


class WorkerLocal(_Hosted, p.WorkerLocal):
    """One value per process; the coordinator keeps each process's published copy."""

    __slots__ = ("_factory", "_state")
    extra_exposed = ("collect", "factory", "publish")

    def __init__(self, ref: _Ref, factory: Callable[[], Any] | None = None) -> None:
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
                raise BorrowError("WorkerLocal: the factory called get() on its own WorkerLocal")
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


def _publish_all(*, at_exit: bool = False) -> None:
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
                util.debug("dualmode: publishing a WorkerLocal at exit failed: %r", exc)
        else:
            state.publish()


def _release_all_at_exit() -> None:
    with _links_lock:
        links = list(_links.values())
    for link in links:
        if link.owner is not None:
            continue  # the coordinator stops with this process
        try:
            link.release_all_at_exit()
        except Exception as exc:
            util.debug("dualmode: releasing references at exit failed: %r", exc)


# multiprocessing runs these in every process at exit (children skip atexit), highest priority
# first: publish WorkerLocal values while references and coordinators are alive (a manager's
# shutdown runs at priority 0), then give the references back.
_exit_hooks: list[util.Finalize[Any]] = []
_exit_hooks_pid = 0


def _install_exit_hooks() -> None:
    global _exit_hooks, _exit_hooks_pid
    if _exit_hooks_pid == os.getpid() and all(h.still_active() for h in _exit_hooks):
        return
    _exit_hooks = [
        util.Finalize(None, _publish_all, kwargs={"at_exit": True}, exitpriority=20),
        util.Finalize(None, _release_all_at_exit, exitpriority=5),
    ]
    _exit_hooks_pid = os.getpid()


class _Anchor:
    """Keeps the after-fork hook registered (multiprocessing holds it weakly)."""


_ANCHOR = _Anchor()


def _after_os_fork() -> None:
    # A forked child shares nothing with its parent: new connections, no references, its own
    # WorkerLocal values. Objects it inherited stay usable as borrowed references.
    global _process_token, _links_lock, _local_states_lock
    _process_token = secrets.token_hex(8)
    _links_lock = threading.Lock()
    _local_states_lock = threading.Lock()
    for link in _links.values():
        link._reset()
    for state in list(_local_states.values()):
        state.lock = threading.RLock()
        state.initialising = state.ready = False
        state.value = None
    _install_exit_hooks()


_install_exit_hooks()
# A multiprocessing child clears the exit hooks registered while it loaded its arguments (which
# imports this module), then runs the after-fork callbacks: register them again there.
util.register_after_fork(_ANCHOR, lambda _anchor: _install_exit_hooks())
os.register_at_fork(after_in_child=_after_os_fork)


class JobTable(_Hosted, job_table.JobTable):
    """A query database's job table, hosted in the coordinator (design section 5).

    Every process that has the database asks the same :class:`dualmode.job_table.JobTable`:
    claims, waits (with the wait-for-graph cycle check, done in the coordinator) and memos are
    shared by all of them, so each (query, key) executes once in the whole process tree.
    Values and exceptions travel as cloudpickle bytes that only clients load: the coordinator
    never imports the user's value classes.
    """

    __slots__ = ()
    remote = True

    claim = _remote("claim")
    publish = _remote("publish")
    abandon = _remote("abandon")
    add_hits = _remote("add_hits")
    peek = _remote("peek")
    stats = _remote("stats")
    set_input = _remote("set_input")
    get_input = _remote("get_input")
    input_changes = _remote("input_changes")

    def pack(self, memo: Memo, keep_value: bool = True) -> tuple[Memo, bool]:
        """*memo* with its value as bytes (or none, for a ``local=True`` value kept here), and
        whether packing failed: then the memo holds the TypeError that says why, for the
        caller as for everyone else."""
        if memo.state == OK and not keep_value:
            return memo.replace(value=None), False
        if memo.state not in (OK, ERROR, ERROR_ONCE):
            return memo, False
        try:
            return memo.replace(value=self.pack_value(memo.value)), False
        except TypeError as exc:
            state = ERROR if memo.state == OK else memo.state
            return memo.replace(state=state, value=self.pack_value(TypeError(str(exc)))), True

    def unpack(self, memo: Memo) -> Memo:
        if isinstance(memo.value, bytes) and memo.state in (OK, ERROR, ERROR_ONCE):
            return memo.replace(value=cloudpickle.loads(memo.value))
        return memo

    def pack_value(self, value: Any) -> bytes:
        try:
            return cast(bytes, cloudpickle.dumps(value))
        except Exception as exc:
            raise TypeError(
                f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled to the "
                f"coordinator that shares query results between processes ({type(exc).__name__}"
                f": {exc}); return picklable data, or mark the query local=True to keep its "
                "values in the process that computes them"
            ) from exc

    def unpack_value(self, value: bytes) -> Any:
        return cloudpickle.loads(value)


# ---------------------------------------------------------------------------------------------
# Coordinator side
# ---------------------------------------------------------------------------------------------


class _Coordinator:
    """Reference bookkeeping in the coordinator process, hosted at ident ``_COORDINATOR_ID``.

    Every count goes through here, over the caller's persistent connection: one round trip
    instead of the stdlib proxies' new connection per incref, and pins make handing a
    reference to another process (pickling) safe even if the sender drops its copy first.
    """

    exposed = ("adopt", "create", "decref_many", "info", "pin")

    def __init__(self, server: Any) -> None:
        self._server = server  # multiprocessing.managers.Server internals are not in typeshed
        self._lock = threading.Lock()
        self._serials: dict[str, int] = {}
        self._pins: dict[int, str] = {}
        self._counter = itertools.count(1)

    def _drain_local(self) -> None:
        # References that died in this process (values inside hosted objects) queue up here.
        link = _links.get(self._server.address)
        if link is not None and link._dead:
            self._release(link._take_dead())

    def _check(self, ident: str, serial: int) -> None:
        if self._serials.get(ident) != serial:
            raise ReferenceError(
                "this dualmode primitive was freed: every reference to it was dropped before "
                "this copy was unpickled (a pickle may be loaded again only while another copy "
                "keeps the object alive)"
            )

    def create(self, typeid: str, args: tuple[Any, ...]) -> tuple[str, int]:
        self._drain_local()
        with self._lock:
            ident, _exposed = self._server.create(None, typeid, *args)  # refcount 1: the caller's
            serial = self._serials[ident] = next(self._counter)
        return ident, serial

    def pin(self, ident: str, serial: int) -> int:
        self._drain_local()
        with self._lock:
            self._check(ident, serial)
            self._server.incref(None, ident)
            pin = next(self._counter)
            self._pins[pin] = ident
        return pin

    def adopt(self, pin: int, ident: str, serial: int) -> None:
        self._drain_local()
        with self._lock:
            if self._pins.pop(pin, None) == ident:
                return  # the pin's reference becomes the loader's
            self._check(ident, serial)  # loaded again: a fresh reference, if still alive
            self._server.incref(None, ident)

    def decref_many(self, idents: list[str]) -> None:
        self._drain_local()
        self._release(idents)

    def _release(self, idents: list[str]) -> None:
        with self._lock:
            for ident in idents:
                try:
                    self._server.decref(None, ident)
                except (KeyError, AssertionError):  # already freed: nothing to do
                    continue
                if ident not in self._server.id_to_refcount:
                    self._serials.pop(ident, None)

    def info(self) -> dict[str, int]:
        """The coordinator's pid and how many objects it hosts (for diagnostics and tests)."""
        self._drain_local()
        with self._lock:
            return {"pid": os.getpid(), "objects": len(self._serials)}


class _CoordinatorServer(Server):
    """The manager's server, plus the bookkeeping object at a well-known ident."""

    def __init__(self, registry: Any, address: Any, authkey: bytes, serializer: str) -> None:
        super().__init__(registry, address, authkey, serializer)
        coordinator = _Coordinator(self)
        internals: Any = self  # id_to_refcount and the None entry are not in typeshed
        internals.id_to_obj[_COORDINATOR_ID] = (coordinator, set(_Coordinator.exposed), None)
        internals.id_to_refcount[_COORDINATOR_ID] = 1  # never freed
        global _server
        _server = self
        with _links_lock:
            _links[self.address] = _Link(self.address, os.getpid(), None, local=coordinator)


_server: _CoordinatorServer | None = None  # set in the coordinator process


class _Manager(BaseManager):
    _Server = _CoordinatorServer


def _init_coordinator() -> None:
    """First code in the coordinator process: exit when the owning process is gone."""
    owner = parent_process()
    if owner is not None:
        threading.Thread(
            target=_exit_after, args=(owner,), name="dualmode-owner-watch", daemon=True
        ).start()


def _exit_after(owner: BaseProcess) -> None:
    owner.join()  # returns when the owner exits, however it exits (its pipe end closes)
    os._exit(0)


# The coordinator builds hosted objects with one threads backend of its own.
_hosting: threads.ThreadsBackend | None = None
_hosting_lock = threading.Lock()


def _hosting_backend() -> threads.ThreadsBackend:
    global _hosting
    with _hosting_lock:
        if _hosting is None:
            _hosting = threads.ThreadsBackend()
        return _hosting


class _HostedFreezeLock(threads.FreezeLock):
    """The threads FreezeLock, plus the two queries a client cache needs (one round trip each)."""

    def _read_frozen(self) -> tuple[bool, Any]:
        """``read()``, and whether the value was frozen before it: then it is final."""
        frozen = self.frozen
        return frozen, self.read()

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
    lock = None
    if lock_ident is not None:
        assert _server is not None  # this runs in the coordinator
        lock = _server.id_to_obj[lock_ident][0]
    return threads.Condition(_hosting_backend(), lock)


def _host(typeid: str, *args: Any) -> object:
    """Build the hosted object for *typeid* (runs in the coordinator, from Server.create)."""
    if typeid == "JobTable":
        return job_table.JobTable(*args)
    if typeid == "WorkerLocal":
        return _WorkerLocalStore(*args)
    if typeid == "Condition":
        return _host_condition(*args)
    if typeid == "FreezeLock":
        return _HostedFreezeLock(_hosting_backend(), *args)
    cls: Callable[..., object] = getattr(threads, typeid)
    return cls(_hosting_backend(), *args)


_CLIENT_CLASSES: tuple[type[_Hosted], ...] = (
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
    RwLock,
    Mutex,
    OnceCell,
    AtomicInt,
    WorkerLocal,
    ShardedDict,
    FreezeLock,
    Queue,
    JobTable,
)
for _cls in _CLIENT_CLASSES:
    _Manager.register(
        _cls.__name__,
        callable=functools.partial(_host, _cls.__name__),
        exposed=_cls.exposed,
        create_method=False,
    )


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


# -- the worker pool ---------------------------------------------------------------------------

_in_worker = False  # True in a pool worker process: nested parallel calls run inline there


def _init_worker(backend: ProcessesBackend) -> None:
    """Start-up of a pool worker: the pool's backend is current here, and runs inline."""
    global _in_worker
    _in_worker = True
    from dualmode.config import configure

    configure(backend)


def _with_worker_traceback(outcome: Outcome) -> Outcome:
    """A failure keeps its type and message; a note carries the worker's traceback text
    (notes survive pickling, unlike ``__traceback__`` and ``__cause__``)."""
    ok, value = outcome
    if not ok:
        text = "".join(traceback.format_exception(value)).rstrip()
        value.add_note(f"[traceback in dualmode worker process {os.getpid()}]\n{text}")
    return outcome


def _picklable_outcome(outcome: Outcome) -> Outcome:
    """The outcome, or a TypeError saying why its value or exception cannot travel back."""
    try:
        cloudpickle.dumps(outcome)
    except Exception as exc:
        ok, value = outcome
        what = "the result" if ok else f"the exception {type(value).__name__}({value})"
        return False, TypeError(
            f"{what} could not be pickled to send back from worker process {os.getpid()}: "
            f"{type(exc).__name__}: {exc}"
        )
    return outcome


def _run_task(payload: bytes) -> bytes:
    """Run one task in a pool worker: ``(fn, args, chunk)`` in, its Outcome(s) out.

    Both directions use cloudpickle, so lambdas, closures and dynamically made classes travel.
    The WorkerLocal values this process holds are published after every task.
    """
    fn, args, is_chunk = cloudpickle.loads(payload)
    result = fn(*args)
    outcomes: list[Outcome] = result if is_chunk else [result]
    outcomes = [_with_worker_traceback(o) for o in outcomes]
    _publish_all()
    try:
        return cast(bytes, cloudpickle.dumps(outcomes if is_chunk else outcomes[0]))
    except Exception:  # find the outcomes that cannot travel and say why, keep the rest
        fixed = [_picklable_outcome(o) for o in outcomes]
        return cast(bytes, cloudpickle.dumps(fixed if is_chunk else fixed[0]))


def _unpicklable(what: str, obj: object, exc: Exception) -> TypeError:
    return TypeError(
        f"{what} ({type(obj).__module__}.{type(obj).__qualname__}) cannot be pickled to send "
        f"to a worker process: {type(exc).__name__}: {exc}. Pass picklable data (module-level "
        "functions, lambdas and closures are fine), or use the threads backend"
    )


def _dumps_task(fn: Callable[..., Any], args: tuple[Any, ...], *, is_chunk: bool) -> bytes:
    """Pickle a task; a TypeError names the function or the argument that cannot travel."""
    try:
        return cast(bytes, cloudpickle.dumps((fn, args, is_chunk)))
    except Exception as exc:
        error = exc
    for what, obj in [("the function", fn), *((f"argument {i}", a) for i, a in enumerate(args))]:
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            raise _unpicklable(what, obj, exc) from exc
    raise TypeError(f"the task cannot be pickled to send to a worker process: {error}")


class _WorkerPool:
    """Spawned worker processes (a ProcessPoolExecutor) that run tasks sent with cloudpickle.

    Started on first use. A worker that dies fails the tasks it held with WorkerCrashed
    (never the others' results) and the pool is replaced for later calls.
    """

    def __init__(self, backend: ProcessesBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _live_executor(self) -> ProcessPoolExecutor:
        with self._lock:
            executor = self._executor
            if executor is None or getattr(executor, "_broken", False):
                if executor is not None:
                    executor.shutdown(wait=False, cancel_futures=True)
                executor = ProcessPoolExecutor(
                    self._backend.workers,
                    mp_context=get_context("spawn"),  # never fork: this process has threads
                    initializer=_init_worker,
                    initargs=(self._backend,),
                )
                self._executor = executor
            return executor

    def submit(self, payload: bytes) -> Future[Any]:
        """Send one pickled task; the returned future holds its unpickled Outcome(s)."""
        result: Future[Any] = Future()
        try:
            sent = self._live_executor().submit(_run_task, payload)
        except BrokenProcessPool:  # broke between the check and the submit: once more
            sent = self._live_executor().submit(_run_task, payload)
        sent.add_done_callback(functools.partial(self._settle, result))
        return result

    @staticmethod
    def _settle(result: Future[Any], sent: Future[bytes]) -> None:
        try:
            result.set_result(cloudpickle.loads(sent.result()))
        except BrokenProcessPool as exc:
            result.set_exception(
                WorkerCrashed(
                    "a dualmode worker process died while running this task (killed, out of "
                    f"memory, or os._exit in the task): {exc}"
                )
            )
        except BaseException as exc:
            result.set_exception(exc)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


class ProcessesBackend(Backend):
    """Primitives hosted by one coordinator process, usable from every process it starts.

    The coordinator starts (with ``spawn``) when the first primitive is made, and stops at
    :meth:`close` or when the creating process exits. Pickling the backend, or unpickling a
    primitive in another process, gives a *handle* there: ``backend.create_lock()`` etc. build
    more primitives in the same coordinator; ``close()`` on a handle only stops that handle
    from creating more (the coordinator belongs to the creating process).
    """

    name = "processes"
    parallel = True

    def __init__(self, workers: int | None = None) -> None:
        """*workers*: how many worker processes parallel work will use (primitives do not
        depend on it); the default is the CPUs this process may use."""
        super().__init__(workers)
        self._start_lock = threading.Lock()
        self._link_: _Link | None = None
        self._manager: _Manager | None = None
        self._process: BaseProcess | None = None
        self._owner_pid = 0  # the process that started the coordinator (may join it)
        self._fate_lock = threading.Lock()
        self._owner = True
        self._pool = _WorkerPool(self)

    @classmethod
    def _handle(cls, link: _Link) -> ProcessesBackend:
        handle = cls(link.workers)
        handle._link_ = link
        handle._owner = False
        return handle

    def __reduce__(self) -> tuple[Any, ...]:
        link = self._link()
        return _attach, (link.address, link.pid, link.workers)

    @property
    def coordinator_pid(self) -> int | None:
        """The coordinator's process id, or None before the first primitive starts it."""
        link = self._link_
        return None if link is None else link.pid

    def _link(self) -> _Link:
        """The link to the coordinator, starting the coordinator if this is the first use."""
        link = self._link_
        if link is not None and not self._closed:
            return link
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed; create a new backend")
            if self._link_ is None:
                self._link_ = self._start()
            return self._link_

    def _start(self) -> _Link:
        # spawn, never fork: this process may have threads (and fork would copy their locks).
        manager = _Manager(ctx=get_context("spawn"), shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            manager.start(_init_coordinator)
        except (EOFError, OSError) as exc:
            raise WorkerCrashed(
                f"the dualmode coordinator process failed to start ({type(exc).__name__}: "
                f"{exc}); its error output, if any, is on this process's stderr"
            ) from exc
        process: BaseProcess = cast(Any, manager)._process  # not in typeshed
        self._manager, self._process, self._owner_pid = manager, process, os.getpid()
        assert process.pid is not None
        process.name = f"dualmode-coordinator-{process.pid}"
        link = _link_for(manager.address, process.pid, self.workers)
        link.owner = self
        return link

    def _coordinator_fate(self) -> str | None:
        """Why the coordinator stopped answering, if this process can tell."""
        process = self._process
        if process is None or self._owner_pid != os.getpid():
            return None
        # One thread at a time: two concurrent joins race in waitpid, and the loser would
        # see no exit code. A crash is usually seen by a client first: give it a moment.
        with self._fate_lock:
            process.join(0.5)
            code = process.exitcode
        if code is None:
            return "it stopped answering (it is still running)"
        if code < 0:
            try:
                return f"it was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"it was killed by signal {-code}"
        return f"it exited with code {code}"

    def _shutdown(self) -> None:
        self._pool.close()  # first: its workers hold links to the coordinator
        with self._start_lock:
            link, manager, process = self._link_, self._manager, self._process
            self._manager = self._process = None
        if link is None or not self._owner:
            return  # never started, or a handle: the coordinator belongs to its creator
        link.gone = "its ProcessesBackend was closed"
        _forget_link(link)
        if manager is not None:
            manager.shutdown()  # asks it to stop; after a timeout terminates, then kills
        if process is not None:
            process.join(_SHUTDOWN_TIMEOUT)
            if process.is_alive():  # not reached in practice: shutdown() ends with a kill
                process.kill()
                process.join()

    def _debug_info(self) -> dict[str, int]:
        """The coordinator's pid and how many objects it hosts now (for tests)."""
        info: dict[str, int] = self._link()._coordinator("info")
        return info

    # -- running work ----------------------------------------------------------------------------
    # In a pool worker, nested calls run inline (as serial does): the pool's processes are all
    # the parallelism there is, and a worker waiting on its own pool could deadlock it.

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Outcome]:
        if _in_worker:
            return run_now(capture, fn, *args)
        return self._pool.submit(_dumps_task(capture, (fn, *args), is_chunk=False))

    def map_chunks(
        self, fn: Callable[[Any], Any], chunks: Sequence[Sequence[Any]]
    ) -> list[Future[list[Outcome]]]:
        if _in_worker:
            return [run_now(run_chunk, fn, chunk) for chunk in chunks]
        payloads = []
        start = 0
        for chunk in chunks:  # pickle them all before any work starts
            try:
                payloads.append(_dumps_task(run_chunk, (fn, chunk), is_chunk=True))
            except TypeError as exc:
                raise self._name_item(fn, chunk, start) from exc
            start += len(chunk)
        return [self._pool.submit(payload) for payload in payloads]

    @staticmethod
    def _name_item(fn: Callable[..., Any], chunk: Sequence[Any], start: int) -> TypeError:
        """The TypeError for the first thing of a chunk that cannot be pickled."""
        try:
            cloudpickle.dumps(fn)
        except Exception as exc:
            return _unpicklable("the function", fn, exc)
        for offset, item in enumerate(chunk):
            try:
                cloudpickle.dumps(item)
            except Exception as exc:
                return _unpicklable(f"item {start + offset}", item, exc)
        return TypeError(f"the chunk starting at item {start} cannot be pickled")

    def wait(
        self, futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        done, not_done = wait(futures, return_when=return_when)
        return set(done), set(not_done)

    def broadcast(self, fn: Callable[[], Any]) -> list[Future[Outcome]]:
        if _in_worker:
            return [self.submit(fn)]
        # A worker that reaches the barrier holds it until every worker has a copy, so each
        # copy runs in a different process.
        meeting = self.create_barrier(self.workers, timeout=_BROADCAST_TIMEOUT)
        return [self.submit(_after_barrier, meeting, fn) for _ in range(self.workers)]

    # -- primitives ----------------------------------------------------------------------------

    def _host(self, cls: type[H], *args: Any) -> H:
        return cls(self._link().create(cls.__name__, args))

    def create_lock(self) -> Lock:
        return self._host(Lock)

    def create_rlock(self) -> RLock:
        return self._host(RLock)

    def create_semaphore(self, value: int = 1) -> Semaphore:
        return self._host(Semaphore, value)

    def create_bounded_semaphore(self, value: int = 1) -> BoundedSemaphore:
        return self._host(BoundedSemaphore, value)

    def create_event(self) -> Event:
        return self._host(Event)

    def create_condition(self, lock: p.Lock | p.RLock | None = None) -> Condition:
        """A Condition over a new RLock, or over *lock*: a Lock/RLock of this backend."""
        link = self._link()
        if lock is None:
            return self._host(Condition, None)
        if isinstance(lock, (Lock, RLock)) and lock._ref.link is link:
            # The coordinator resolves the ident to the real lock object it hosts.
            return self._host(Condition, lock._ref.ident)
        made_by = getattr(getattr(lock, "backend", None), "name", None)
        raise TypeError(
            f"Condition(lock=...) on the processes backend needs a Lock or RLock made by the "
            f"same ProcessesBackend ({self!r}), got {type(lock).__qualname__}"
            f"{f' of the {made_by!r} backend' if made_by else ''}; create the lock with the "
            "same backend, or omit lock= for a new RLock"
        )

    def create_barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> Barrier:
        """A Barrier; *action* (cloudpickled) runs in the coordinator when the parties meet."""
        return self._host(Barrier, parties, None if action is None else _ByValue(action), timeout)

    def create_rwlock(self) -> RwLock:
        return self._host(RwLock)

    def create_mutex(self, value: Any = None) -> Mutex:
        return self._host(Mutex, value)

    def create_once_cell(self) -> OnceCell:
        return self._host(OnceCell)

    def create_atomic_int(self, value: int = 0) -> AtomicInt:
        return self._host(AtomicInt, value)

    def create_worker_local(self, factory: Callable[[], Any]) -> WorkerLocal:
        if not callable(factory):
            raise TypeError(f"WorkerLocal(factory) needs a callable, got {factory!r}")
        ref = self._link().create("WorkerLocal", (cloudpickle.dumps(factory),))
        return WorkerLocal(ref, factory)

    def create_sharded_dict(self) -> ShardedDict:
        return self._host(ShardedDict)

    def create_freeze_lock(self, value: Any = None) -> FreezeLock:
        return self._host(FreezeLock, value)

    def create_queue(self, maxsize: int = 0) -> Queue:
        return self._host(Queue, maxsize)

    def create_job_table(
        self, fallbacks: dict[str, bool], volatile: frozenset[str] = frozenset()
    ) -> JobTable:
        return self._host(JobTable, fallbacks, volatile)


def _after_barrier(meeting: Barrier, fn: Callable[[], T]) -> T:
    meeting.wait()
    return fn()


def _attach(address: Any, pid: int, workers: int | None) -> ProcessesBackend:
    """Unpickle a ProcessesBackend: the owner in its own process, a handle elsewhere."""
    return _link_for(address, pid, workers).backend()
