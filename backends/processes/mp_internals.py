"""The processes backend's one door into multiprocessing beyond its documented API.

The coordinator is a :class:`multiprocessing.managers.BaseManager` server whose wire protocol,
reference counts and process handle are not public API; the exit and after-fork hooks of
:mod:`multiprocessing.util`, the bootstrapping flag of a new child, and the worker start-up of
:class:`concurrent.futures.ProcessPoolExecutor` are undocumented. Everything the backend needs
from them is here, behind small typed functions, so a CPython release that changes them breaks
this module alone; the other modules use only what this one exports. See
docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import connection, current_process, get_context, parent_process, util
from multiprocessing.managers import BaseManager, RemoteError, Server
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from types import FrameType
from typing import Any, ClassVar

__all__ = [
    "RERAN_MAIN_EXIT",
    "ExitHook",
    "HostingManager",
    "HostingServer",
    "connect",
    "debug",
    "dumps",
    "is_broken",
    "loads",
    "leave_if_rerunning_main",
    "left_rerunning_main",
    "reply_value",
    "request",
    "worker_pool",
]


# -- the manager wire protocol (what multiprocessing.managers' proxies send and expect) ----------


def dumps(obj: object) -> bytes:
    """*obj* pickled as a manager connection sends it (ForkingPickler: sockets, fds...)."""
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(obj)
    # bytes, not dumps()'s memoryview: a frame kept by a traceback must not pin an export of
    # the BytesIO (collecting such a cycle raises BufferError on 3.13t).
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return ForkingPickler.loads(data)


def request(ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """One request for a manager server: run *method* on hosted object *ident*."""
    return dumps((ident, method, args, kwargs))


def _reply_error(kind: str, result: Any) -> BaseException:
    """The exception a server reply of *kind* stands for (as multiprocessing.managers does)."""
    if kind == "#ERROR" and isinstance(result, BaseException):
        return result  # raised by the hosted object: its own type and arguments
    if kind in ("#TRACEBACK", "#UNSERIALIZABLE"):
        return RemoteError(f"{kind[1:].lower()} in the dualmode coordinator: {result}")
    return RemoteError(f"unexpected reply from the dualmode coordinator: {kind!r} {result!r}")


def reply_value(reply: bytes) -> Any:
    """The value a server's reply carries; raises the exception it carries instead."""
    kind, result = loads(reply)
    if kind == "#RETURN":
        return result
    raise _reply_error(kind, result)


def connect(address: Any, name: str) -> connection.Connection:
    """A new connection to the manager server at *address*, served by a thread of its own.

    Raises EOFError or OSError when the server is gone, AuthenticationError when this process
    does not have the server's authkey, RemoteError when the server refuses.
    """
    conn = connection.Client(address, authkey=bytes(current_process().authkey))
    conn.send((None, "accept_connection", (name,), {}))
    kind, result = conn.recv()
    if kind != "#RETURN":
        conn.close()
        raise _reply_error(kind, result)
    return conn


# -- the coordinator's server and the manager that starts it ------------------------------------


class HostingServer(Server):
    """A manager server with a bookkeeping object (the *keeper*) at a fixed ident.

    A subclass says what the keeper is (:meth:`make_keeper`) and where (``keeper_ident``).
    The methods below give typed access to the server's table of hosted objects and their
    reference counts.
    """

    keeper_ident: ClassVar[str]

    def __init__(self, registry: Any, address: Any, authkey: bytes, serializer: str) -> None:
        super().__init__(registry, address, authkey, serializer)
        keeper, exposed = self.make_keeper()
        self.id_to_obj[self.keeper_ident] = (keeper, set(exposed), {})
        self._untyped.id_to_refcount[self.keeper_ident] = 1  # never freed

    def make_keeper(self) -> tuple[object, Iterable[str]]:
        """The keeper and the methods clients may call on it."""
        raise NotImplementedError

    @property
    def _untyped(self) -> Any:
        # The reference counts, and None as the connection argument of the methods below,
        # are not in typeshed.
        return self

    def host(self, typeid: str, args: tuple[Any, ...]) -> str:
        """Build a new object of registered *typeid* from *args*; its ident (refcount 1)."""
        ident, _exposed = self._untyped.create(None, typeid, *args)
        return str(ident)

    def hosted(self, ident: str) -> object:
        """The hosted object *ident* itself (KeyError if it was freed)."""
        return self.id_to_obj[ident][0]

    def add_ref(self, ident: str) -> None:
        self._untyped.incref(None, ident)

    def drop_ref(self, ident: str) -> bool:
        """Drop one reference to *ident*; whether this freed the object."""
        try:
            self._untyped.decref(None, ident)
        except (KeyError, AssertionError):  # already freed: nothing to do
            return False
        return ident not in self._untyped.id_to_refcount


class HostingManager(BaseManager):
    """A manager whose server is *server*: ``class M(HostingManager, server=S)``."""

    def __init_subclass__(cls, *, server: type[HostingServer], **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._Server = server  # type: ignore[attr-defined]  # not in typeshed

    @property
    def process(self) -> BaseProcess | None:
        """The server process, once :meth:`start` has made it."""
        process: BaseProcess | None = getattr(self, "_process", None)  # not in typeshed
        return process


# -- the worker pool (a concurrent.futures.ProcessPoolExecutor) --------------------------------


def worker_pool(workers: int, **kwargs: Any) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of *workers* processes that starts them all at once, with spawn
    (never fork: the calling process has threads, whose locks fork would copy).

    By default a spawn pool starts a worker on each ``submit()`` that finds none idle, and
    wakes its manager thread *before* starting it (CPython 3.11 to 3.13 at least): the thread
    may then wait on the worker sentinels without the new one, and if that worker dies nothing
    notices, so its task (and any task waiting for what it was doing) never ends. Started at the
    first ``submit()``, as CPython does for fork, every worker is watched from the start.
    """
    executor = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), **kwargs)
    if hasattr(executor, "_safe_to_dynamically_spawn_children"):  # 3.11 to 3.13 at least
        executor._safe_to_dynamically_spawn_children = False
    return executor


def kill_workers(executor: ProcessPoolExecutor) -> None:
    """Kill *executor*'s worker processes (``ProcessPoolExecutor.kill_workers`` from 3.14 on;
    before, its ``_processes``): its manager thread finds them dead and fails every task it
    holds with BrokenProcessPool."""
    kill = getattr(executor, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()


def is_broken(executor: ProcessPoolExecutor) -> bool:
    """Whether a worker of *executor* died: it fails every task, pending or new."""
    return bool(getattr(executor, "_broken", False))


# -- process lifecycle ----------------------------------------------------------------------


def exit_with_parent(name: str) -> None:
    """In a child started by multiprocessing: a daemon thread (*name*) that ends this process
    as soon as its parent has exited, however it exited (SIGKILL, the OOM killer, a test
    runner's timeout). It waits on the parent's sentinel, a pipe whose other end only the
    parent holds: the pipe breaks when the parent is gone, on every platform that
    multiprocessing runs on, with no polling (loky polls the parent's pid instead; a child's
    PR_SET_PDEATHSIG would fire when the thread that started it ends, not the process)."""
    parent = parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), name=name, daemon=True).start()


def _exit_after(parent: BaseProcess) -> None:
    parent.join()
    os._exit(0)


# The exit status of a child that found itself running the unguarded main module.
RERAN_MAIN_EXIT = 75


def _rerunning_main() -> bool:
    """Whether this is a new child process still running the main module's top-level code.

    Children started with spawn or forkserver run the parent's main module again, named
    ``__mp_main__``, before their own work (the bootstrapping phase); code there that is not
    under ``if __name__ == "__main__":`` runs in every child.
    """
    if not getattr(current_process(), "_inheriting", False):
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


def leave_if_rerunning_main() -> None:
    """Call before starting a process. In a child that is running the main module's top level
    again, exit at once, quietly, with status :data:`RERAN_MAIN_EXIT`: the parent ran the same
    code first, and :func:`left_rerunning_main` lets it raise the one error that says what to
    do (multiprocessing would fail in the child, with a page of traceback for each child)."""
    if _rerunning_main():
        raise SystemExit(RERAN_MAIN_EXIT)


def left_rerunning_main(process: BaseProcess | None) -> bool:
    """Whether *process*, which failed to start, left because it ran the unguarded main."""
    if process is None:
        return False
    process.join(5.0)  # it is exiting already: it closed its end of the pipe
    return process.exitcode == RERAN_MAIN_EXIT


def debug(message: str, *args: object) -> None:
    """Log to multiprocessing's debug logger (``multiprocessing.log_to_stderr(DEBUG)``)."""
    util.debug(message, *args)


class ExitHook:
    """Runs *fn* when this process exits, and when each process started from it exits.

    multiprocessing runs its exit finalizers in every process it starts (its children skip
    :mod:`atexit`), highest *priority* first; a manager's shutdown runs at priority 0. A child
    clears the finalizers registered while it loaded its arguments, and a forked child must not
    run its parent's, so the hook registers itself again after either.
    """

    _alive: ClassVar[list[ExitHook]] = []  # multiprocessing holds after-fork callbacks weakly

    def __init__(self, fn: Callable[[], object], priority: int) -> None:
        self._fn = fn
        self._priority = priority
        self._finalizer: util.Finalize[Any] | None = None
        self._pid = 0
        self.install()
        ExitHook._alive.append(self)
        util.register_after_fork(self, ExitHook.install)
        os.register_at_fork(after_in_child=self.install)

    def install(self) -> None:
        """Register the hook in this process, unless it is registered here already."""
        finalizer = self._finalizer
        if self._pid == os.getpid() and finalizer is not None and finalizer.still_active():
            return
        self._finalizer = util.Finalize(None, self._fn, exitpriority=self._priority)
        self._pid = os.getpid()
