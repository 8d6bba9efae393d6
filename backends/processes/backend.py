"""ProcessesBackend: the backend object of the processes backend, in the process that uses it.

It owns the coordinator process (started on the first primitive) and the pool of worker
processes (started on the first parallel call), and ties the other modules of this package
together. See docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, Future, wait
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import cloudpickle  # type: ignore[import-untyped]

import dualmode.primitives as p
from dualmode.backend import Backend, Outcome, capture, run_chunk, run_now
from dualmode.errors import WorkerCrashed
from dualmode.watchdog import creation_site

from . import mp_internals
from .coordinator import Manager, init_coordinator
from .link import Link, forget_link, link_for
from .primitives import (
    AtomicInt,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    FreezeLock,
    Hosted,
    Lock,
    Mutex,
    OnceCell,
    Queue,
    RLock,
    RwLock,
    Semaphore,
    ShardedDict,
    WorkerLocal,
)
from .table_server import SharedJobTable
from .workers import WorkerPool, dumps_task, in_worker, task_name

__all__ = ["ProcessesBackend"]

H = TypeVar("H", bound=Hosted)
T = TypeVar("T")

_SHUTDOWN_TIMEOUT = 5.0  # seconds the coordinator gets to stop before it is terminated
# How long broadcast's copies wait for every worker to take one (a busy pool is slow to).
_BROADCAST_TIMEOUT = 120.0


def _unguarded_main() -> RuntimeError:
    """The error for the processes backend used at the top level of an unguarded main module.

    A RuntimeError, as multiprocessing raises for the same mistake when it notices it (in the
    child, among a page of traceback), so code that handles that error handles this one.
    """
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    where = f"the main module ({main})" if main else "the main module"
    return RuntimeError(
        f"the processes backend was used at the top level of {where}, which every process it "
        "starts runs again (with the spawn start method) before doing its work. Put the code "
        'that uses the backend under `if __name__ == "__main__":` in the main module; '
        "definitions (functions, classes, queries) may stay at the top level"
    )


class _ByValue:
    """Pickles *obj* with cloudpickle inside a standard pickle; loads as *obj* itself."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, ...]:
        return cloudpickle.loads, (cloudpickle.dumps(self.obj),)


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

    def __init__(self, workers: int | None = None, watchdog: float | None = None) -> None:
        """*workers*: how many worker processes parallel work will use (primitives do not
        depend on it); the default is the CPUs this process may use. *watchdog*: the
        deadlock watchdog's limit, for waits on the primitives; it runs in the coordinator,
        which sees every holder and waiter (docs/guarantees.md#the-deadlock-watchdog)."""
        super().__init__(workers, watchdog)
        self._start_lock = threading.Lock()
        self._link_: Link | None = None
        self._manager: Manager | None = None
        self._process: BaseProcess | None = None
        self._owner_pid = 0  # the process that started the coordinator (may join it)
        self._fate_lock = threading.Lock()
        self._owner = True
        self._pool = WorkerPool(self)

    @classmethod
    def _handle(cls, link: Link) -> ProcessesBackend:
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

    def _link(self) -> Link:
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

    def _start(self) -> Link:
        mp_internals.leave_if_rerunning_main()
        # spawn, never fork: this process may have threads (and fork would copy their locks).
        manager = Manager(ctx=get_context("spawn"), shutdown_timeout=_SHUTDOWN_TIMEOUT)
        try:
            manager.start(init_coordinator, (self.watchdog,))
        except (EOFError, OSError) as exc:
            if mp_internals.left_rerunning_main(manager.process):
                raise _unguarded_main() from None
            raise WorkerCrashed(
                f"the dualmode coordinator process failed to start ({type(exc).__name__}: "
                f"{exc}); its error output, if any, is on this process's stderr"
            ) from exc
        process = manager.process
        assert process is not None
        self._manager, self._process, self._owner_pid = manager, process, os.getpid()
        assert process.pid is not None
        process.name = f"dualmode-coordinator-{process.pid}"
        link = link_for(manager.address, process.pid, self.workers)
        link.owner = self
        return link

    def coordinator_fate(self) -> str | None:
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
        forget_link(link)
        if manager is not None:
            manager.shutdown()  # asks it to stop; after a timeout terminates, then kills
        if process is not None:
            process.join(_SHUTDOWN_TIMEOUT)
            if process.is_alive():  # not reached in practice: shutdown() ends with a kill
                process.kill()
                process.join()

    def _debug_info(self) -> dict[str, int]:
        """The coordinator's pid and how many objects it hosts now (for tests)."""
        info: dict[str, int] = self._link().coordinator("info")
        return info

    # -- running work ----------------------------------------------------------------------------
    # In a pool worker, nested calls run inline (as serial does): the pool's processes are all
    # the parallelism there is, and a worker waiting on its own pool could deadlock it.

    def runs_inline(self) -> bool:
        return in_worker()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Outcome]:
        if in_worker():
            return run_now(capture, fn, *args)
        payload = dumps_task(capture, fn, args)
        return self._pool.submit(payload, what=task_name(fn))

    def map_chunks(
        self, fn: Callable[[Any], Any], chunks: Sequence[Sequence[Any]]
    ) -> list[Future[list[Outcome]]]:
        if in_worker():
            return [run_now(run_chunk, fn, chunk) for chunk in chunks]
        payloads = []
        start = 0
        for chunk in chunks:  # pickle them all before any work starts
            payload = dumps_task(run_chunk, fn, (chunk,), first_item=start)
            last = start + len(chunk) - 1
            items = f"item {start}" if last == start else f"items {start} to {last}"
            payloads.append((payload, f"{task_name(fn)} on {items}"))
            start += len(chunk)
        return [self._pool.submit(payload, what=what) for payload, what in payloads]

    def wait(
        self, futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        done, not_done = wait(futures, return_when=return_when)
        return set(done), set(not_done)

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel those not started; if any runs, kill the worker processes (every task they
        hold fails with WorkerCrashed, other callers' too: an interrupted program is going
        down) and let the next call start a new pool."""
        running = [future for future in futures if not future.cancel() and not future.done()]
        if running:
            self._pool.stop_workers()

    def broadcast(self, fn: Callable[[], Any]) -> list[Future[Outcome]]:
        if in_worker():
            return [self.submit(fn)]
        # A worker that reaches the barrier holds it until every worker has a copy, so each
        # copy runs in a different process. The function is pickled alone first, so that one
        # that cannot travel is named as the caller's (not as the barrier runner's argument)
        # before the barrier is made.
        dumps_task(capture, fn, ())
        meeting = self.create_barrier(self.workers, timeout=_BROADCAST_TIMEOUT)
        return [self.submit(_after_barrier, meeting, fn) for _ in range(self.workers)]

    # -- primitives ----------------------------------------------------------------------------
    # Each factory hosts the threads class of the same name in the coordinator and returns
    # this package's client class for it (docs/architecture.md#the-backend-protocol).

    def _host(self, cls: type[H], *args: Any) -> H:
        return cls(self._link().create(cls.__name__, args, creation_site()))

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

    def create_condition(self, lock: p.AnyLock | None = None) -> Condition:
        """A Condition over a new RLock, or over *lock*: a Lock/RLock of this backend.

        Any other lock (a ``threading.Lock``, another backend's) raises TypeError: the
        coordinator, which hosts the Condition and does its waiting, cannot reach it.
        """
        link = self._link()
        if lock is None:
            return self._host(Condition, None)
        if isinstance(lock, (Lock, RLock)) and lock._ref.link is link:
            # The coordinator resolves the ident to the real lock object it hosts.
            return self._host(Condition, lock._ref.ident)
        made_by = getattr(getattr(lock, "backend", None), "name", None)
        raise TypeError(
            f"Condition(lock=...) on the processes backend needs a Lock or RLock made by the "
            f"same ProcessesBackend ({self!r}), got {type(lock).__module__}."
            f"{type(lock).__qualname__}{f' of the {made_by!r} backend' if made_by else ''}, "
            "which the coordinator hosting the Condition cannot reach; create the lock with "
            "dm.Lock() or dm.RLock() under the same backend, or omit lock= for a new RLock"
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
    ) -> SharedJobTable:
        # Kept in this process and served to the others (see .table_server): a program whose
        # queries run here alone pays no round trip.
        return SharedJobTable(fallbacks, volatile)


def _after_barrier(meeting: Barrier, fn: Callable[[], T]) -> T:
    meeting.wait()
    return fn()


def _attach(address: Any, pid: int, workers: int | None) -> ProcessesBackend:
    """Unpickle a ProcessesBackend: the owner in its own process, a handle elsewhere."""
    return link_for(address, pid, workers).backend()
