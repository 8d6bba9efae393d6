"""The link from a process to one coordinator: connections, requests and reference counts.

Every process that uses a primitive of the processes backend (the creating process, the pool's
workers, any process it starts, the coordinator itself for primitives stored inside hosted
objects) has one :class:`Link` per coordinator, shared by all the primitives hosted there. See
"The processes backend: one module per process role" in docs/architecture.md.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from multiprocessing import AuthenticationError, connection, current_process
from typing import TYPE_CHECKING, Any

from dualmode.errors import WorkerCrashed

from . import mp_internals

if TYPE_CHECKING:
    from .backend import ProcessesBackend
    from .coordinator import Coordinator

__all__ = [
    "COORDINATOR_ID",
    "Link",
    "Ref",
    "forget_link",
    "host_link",
    "link_for",
    "links",
    "refused",
]

COORDINATOR_ID = "dualmode-coordinator"  # the ident of the bookkeeping object in the server


class Link:
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
        local: Coordinator | None = None,
    ) -> None:
        self.address = address
        self.pid = pid  # the coordinator's
        self.workers = workers
        self.owner: ProcessesBackend | None = None  # set in the process that owns the coordinator
        self.gone: str | None = None  # why the coordinator can no longer be used, once known
        self._local = local  # the coordinator object itself, in the coordinator process
        self._handle: ProcessesBackend | None = None
        self.reset()

    def reset(self) -> None:
        """Forget connections and references: a forked child owns none of its parent's."""
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._owned: collections.Counter[str] = collections.Counter()
        # Idents of dead references. Finalizers only append here (they may run inside any
        # operation, even one holding a lock); the next request sends them.
        self.dead: collections.deque[str] = collections.deque()
        self._exited = False

    def backend(self) -> ProcessesBackend:
        """The owning backend here, else a handle to the same coordinator (made once)."""
        if self.owner is not None:
            return self.owner
        from .backend import ProcessesBackend  # that module imports this one

        with self._lock:
            if self._handle is None:
                self._handle = ProcessesBackend._handle(self)
            return self._handle

    # -- requests ------------------------------------------------------------------------------

    def call(self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``method(*args, **kwargs)`` on hosted object *ident*; return or raise its outcome."""
        if self.dead:
            dead = self.take_dead()
            if dead:
                self._request(COORDINATOR_ID, "decref_many", (dead,), {})
        return self._request(ident, method, args, kwargs)

    def _request(
        self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.gone is not None:
            raise WorkerCrashed(self._gone_message(self.gone))
        # Pickle before touching the connection: an argument that does not pickle must not
        # leave this thread's connection (and so its lock ownership) in a broken state.
        data = mp_internals.request(ident, method, args, kwargs)
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
        return mp_internals.reply_value(reply)

    def _connection(self) -> connection.Connection:
        conn: connection.Connection | None = getattr(self._tls, "conn", None)
        if conn is not None:
            return conn
        # The coordinator's thread serving this connection takes its name: the watchdog's
        # reports there name the process and thread (coordinator.client_named reads it back).
        name = f"{current_process().name} (pid {os.getpid()})"
        if threading.current_thread() is not threading.main_thread():
            name += "|" + threading.current_thread().name
        try:
            conn = mp_internals.connect(self.address, name)
        except (EOFError, OSError) as exc:
            raise self._crashed(exc) from exc
        except AuthenticationError as exc:
            raise refused(f"the dualmode coordinator at {self.address!r}") from exc
        self._tls.conn = conn
        return conn

    def _drop(self, conn: connection.Connection) -> None:
        self._tls.conn = None
        conn.close()

    def coordinator(self, method: str, *args: Any) -> Any:
        """Call the coordinator's bookkeeping object; directly when this process hosts it."""
        if self._local is not None:
            return getattr(self._local, method)(*args)
        return self.call(COORDINATOR_ID, method, args, {})

    # -- failures ------------------------------------------------------------------------------

    def _gone_message(self, reason: str) -> str:
        return (
            f"the dualmode coordinator process (pid {self.pid}) that hosts this primitive is "
            f"gone: {reason}; every primitive it hosted is lost"
        )

    def _crashed(self, exc: BaseException) -> WorkerCrashed:
        reason = self.gone
        if reason is None and self.owner is not None:
            reason = self.owner.coordinator_fate()
        if reason is None:
            reason = "it died, was killed, or its backend was closed by the process that owns it"
        return WorkerCrashed(f"{self._gone_message(reason)} ({type(exc).__name__}: {exc})")

    # -- reference counting --------------------------------------------------------------------

    def create(self, typeid: str, args: tuple[Any, ...], site: str | None = None) -> Ref:
        """Host a new object of *typeid* built from *args*; return this process's reference.
        *site*: where the user's code created it, for the coordinator's watchdog."""
        ident, serial = self.coordinator("create", typeid, args, site)
        return self._ref(ident, serial)

    def pin(self, ident: str, serial: int) -> int:
        """Take a reference for a pickled copy to carry; whoever loads it adopts it."""
        pin: int = self.coordinator("pin", ident, serial)
        return pin

    def adopt(self, pin: int, ident: str, serial: int) -> Ref:
        """Take over the reference a pickled copy carries (or a new one if it was taken)."""
        self.coordinator("adopt", pin, ident, serial)
        return self._ref(ident, serial)

    def _ref(self, ident: str, serial: int) -> Ref:
        with self._lock:
            self._owned[ident] += 1
        ref = Ref(self, ident, serial)
        finalizer = weakref.finalize(ref, self._release, ident, os.getpid())
        finalizer.atexit = False  # exit is handled by _release_all_at_exit
        return ref

    def _release(self, ident: str, pid: int) -> None:
        # Runs when a reference dies, in any thread, possibly inside any operation: only queue.
        if pid == os.getpid() and not self._exited:
            self.dead.append(ident)

    def take_dead(self) -> list[str]:
        """The idents of references that died since the last call; no longer counted here."""
        dead: list[str] = []
        while self.dead:
            try:
                dead.append(self.dead.popleft())
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
            self.dead.clear()
        if held and self.gone is None and self._local is None:
            self.coordinator("decref_many", held)


class Ref:
    """One counted reference, held by one client object, to hosted object *ident*."""

    __slots__ = ("__weakref__", "ident", "link", "serial")

    def __init__(self, link: Link, ident: str, serial: int) -> None:
        self.link = link
        self.ident = ident
        self.serial = serial  # tells this object from a later one that reuses its ident

    def call(
        self, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        return self.link.call(self.ident, method, args, kwargs or {})


# -- this process's links, one per coordinator address -------------------------------------------


def refused(what: str) -> AuthenticationError:
    """The error for a process that may not use *what* (the coordinator, a job table): it
    lacks the authkey of the process that created it, as one not started from there does."""
    return AuthenticationError(
        f"this process may not use {what}: its authkey differs. Only processes started from "
        "the process that created it (or from their descendants) inherit the key; a database "
        "or primitive pickled to any other process cannot be used there."
    )


_links: dict[Any, Link] = {}
_links_lock = threading.Lock()


def link_for(address: Any, pid: int, workers: int | None) -> Link:
    """This process's link to the coordinator at *address* (made on first use)."""
    with _links_lock:
        link = _links.get(address)
        if link is None:
            link = _links[address] = Link(address, pid, workers)
        return link


def host_link(address: Any, coordinator: Coordinator) -> None:
    """In the coordinator process: its link to itself calls *coordinator* directly."""
    with _links_lock:
        _links[address] = Link(address, os.getpid(), None, local=coordinator)


def links() -> list[Link]:
    with _links_lock:
        return list(_links.values())


def local_link(address: Any) -> Link | None:
    """The link at *address* if this process has one (no lock: the coordinator polls it)."""
    return _links.get(address)


def forget_link(link: Link) -> None:
    with _links_lock:
        if _links.get(link.address) is link:
            del _links[link.address]


def _release_all_at_exit() -> None:
    for link in links():
        if link.owner is not None:
            continue  # the coordinator stops with this process
        try:
            link.release_all_at_exit()
        except Exception as exc:
            mp_internals.debug("dualmode: releasing references at exit failed: %r", exc)


def _after_os_fork() -> None:
    # A forked child shares nothing with its parent: new connections, no references. Objects
    # it inherited stay usable as borrowed references.
    global _links_lock
    _links_lock = threading.Lock()
    for link in _links.values():
        link.reset()


# After the WorkerLocal values are published (priority 20), before the manager shutdown (0).
_EXIT_HOOK = mp_internals.ExitHook(_release_all_at_exit, priority=5)
os.register_at_fork(after_in_child=_after_os_fork)
