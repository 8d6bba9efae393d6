"""The abstract :class:`Backend`: one class, implemented in full by every backend.

The public API in :mod:`dualmode` never does work itself: it asks for the backend in force
(``dm.current()`` or a ``backend=`` argument) and calls one of the methods below. A backend
module (``dualmode.backends.serial``, ``.threads``, ``.processes``, or a third party's) subclasses
:class:`Backend`, implements every abstract method, and registers the class under the
entry-point group ``dualmode.backends``. docs/architecture.md#the-backend-protocol describes the
protocol for maintainers, docs/backends.md for backend authors.
"""

from __future__ import annotations

import abc
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, Future
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from types import TracebackType

    from . import primitives as p
    from .query.job_table import JobTable
    from .watchdog import Watchdog

T = TypeVar("T")
Args = ParamSpec("Args")

__all__ = [
    "Backend",
    "Outcome",
    "builds",
    "capture",
    "check_watchdog",
    "check_workers",
    "run_chunk",
    "run_now",
]

# What running one call gives: (True, value) or (False, the Exception it raised). Exceptions are
# kept per call, so one failure never loses another call's result.
Outcome = tuple[bool, Any]


def capture(fn: Callable[..., Any], *args: Any) -> Outcome:
    """Run ``fn(*args)``; its value or its Exception as an Outcome (BaseException propagates)."""
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, exc


def run_chunk(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Outcome]:
    """``fn`` on every item, in order, each failure recorded and the rest still run."""
    return [capture(fn, item) for item in items]


def run_now(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Call ``fn(*args)`` on this thread, now: a finished future of its result.

    How a backend runs a task where it has no worker to hand it to (serial; a task nested
    inside a process-pool worker)."""
    future: Future[T] = Future()
    future.set_result(fn(*args))
    return future


def check_workers(workers: object) -> int | None:
    """Return *workers* (a positive int, or None for the backend's default); ConfigError otherwise.

    Text is refused, ``"2"`` included: only the environment variable ``DUALMODE_WORKERS`` is
    read from text, by :mod:`dualmode.config`. Any positive count is accepted whatever the
    backend; a backend that is not parallel (serial) still has one worker.
    """
    if workers is None or (
        isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
    ):
        return workers
    hint = ""
    if isinstance(workers, str):
        hint = " (an int, not text: only the DUALMODE_WORKERS variable is parsed)"
    raise ConfigError(
        f"workers={workers!r} is not a worker count: give a positive integer such as 2{hint}, "
        "or None for the backend's default"
    )


def check_watchdog(watchdog: object) -> float | None:
    """Return *watchdog* as the watchdog's limit in seconds: None (the default: the
    ``DUALMODE_WATCHDOG`` variable decides), 0 (off) or a positive number; ConfigError
    otherwise. Text is refused, as for :func:`check_workers`."""
    if watchdog is None:
        return None
    if (
        isinstance(watchdog, int | float)
        and not isinstance(watchdog, bool)
        and math.isfinite(watchdog)
        and watchdog >= 0
    ):
        return float(watchdog)
    hint = " (a number, not text: only the DUALMODE_WATCHDOG variable is parsed)"
    raise ConfigError(
        f"watchdog={watchdog!r} is not a time limit: give the seconds a blocked wait may last "
        f"before the watchdog reports it, such as 2.0, or 0 to turn it off"
        + (hint if isinstance(watchdog, str) else "")
    )


class Backend(abc.ABC):
    """One execution model: where work runs and what the primitives are.

    Attributes:
        name: the name it is registered and selected by (``"threads"``).
        parallel: True when work can run at the same time on several workers, so primitives
            are real locks; False for the serial backend, whose primitives are borrow flags.
        workers: how many workers run parallel work (1 for serial).
        watchdog: the deadlock watchdog's limit in seconds, or None when it is off
            (docs/guarantees.md#the-deadlock-watchdog).
        watcher: the :class:`~dualmode.watchdog.Watchdog` that watches this process's waits
            on the backend's primitives, or None (the watchdog is off, or it runs elsewhere:
            in the processes backend's coordinator).

    A backend owns what it starts (threads, processes, a cluster client). :meth:`close` stops
    all of it and is idempotent; a backend is also a context manager that closes on exit.
    """

    name: ClassVar[str]
    parallel: ClassVar[bool]
    watcher: Watchdog | None = None

    def __init__(self, workers: int | None = None, watchdog: float | None = None) -> None:
        """*workers*: see :func:`check_workers`; *watchdog*: the deadlock watchdog's limit in
        seconds (None or 0: off). A backend that can block watches its waits when it is set;
        one that never blocks (serial) accepts it and has nothing to watch."""
        checked = check_workers(workers)
        self._workers = checked if checked is not None else self.default_workers()
        self._watchdog = check_watchdog(watchdog) or None
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def default_workers(cls) -> int:
        """The worker count used when none is configured: the CPUs this process may use."""
        count: Callable[[], int | None] = getattr(os, "process_cpu_count", os.cpu_count)
        return count() or 1

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this backend can run here, else why not and how to fix it."""
        return None

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def watchdog(self) -> float | None:
        return self._watchdog

    @property
    def closed(self) -> bool:
        return self._closed

    def runs_inline(self) -> bool:
        """Whether a parallel call made here runs all of its items on the calling thread,
        in order (serial; a processes pool worker, where nested calls run inline). Who
        splits work into chunks for the workers (``prefetch``) then makes one."""
        return not self.parallel

    def close(self) -> None:
        """Stop every thread, process or connection this backend started. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:  # noqa: B027 - a hook: backends with nothing to stop skip it
        """Release what the backend holds; called once by :meth:`close`."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        if self._watchdog is not None:
            state = f", watchdog={self._watchdog:g}{state}"
        return f"<{type(self).__name__} name={self.name!r} workers={self._workers}{state}>"

    # -- running work: the protocol behind dualmode.parallel -----------------------------------
    # A backend runs calls and reports Outcomes; dualmode.parallel does the rest (chunking,
    # ordering, ParallelError, progress) once, for every backend
    # (docs/architecture.md#running-work-the-protocol-behind-dualmodeparallel).

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Outcome]:
        """Run ``fn(*args)`` on a worker; the future holds its :data:`Outcome`.

        serial runs it now. A future that raises instead (:class:`WorkerCrashed`) means the
        call was lost with its worker; a processes backend raises TypeError here, naming the
        argument, when the call cannot be pickled.
        """

    @abc.abstractmethod
    def map_chunks(
        self, fn: Callable[[Any], Any], chunks: Sequence[Sequence[Any]]
    ) -> list[Future[list[Outcome]]]:
        """Run ``fn`` on every item of every chunk (:func:`run_chunk`); a future per chunk.

        A processes backend pickles every chunk before it starts any, and raises TypeError
        naming the index (counted across chunks) of an item that cannot be pickled.
        """

    @abc.abstractmethod
    def wait(
        self, futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
    ) -> tuple[set[Future[Any]], set[Future[Any]]]:
        """``concurrent.futures.wait`` with no timeout, except that a worker of this backend
        that waits runs queued tasks meanwhile, so nested parallel calls never deadlock."""

    @abc.abstractmethod
    def broadcast(self, fn: Callable[[], Any]) -> list[Future[Outcome]]:
        """Run ``fn()`` once on every worker; one future per worker, in worker order."""

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """The caller of a parallel call was interrupted (KeyboardInterrupt, SystemExit) while
        it waited for *futures*: stop that work. Here, those not started are cancelled and
        those running finish on their workers, their results dropped (threads cannot be
        stopped). A backend whose workers can be stopped stops the ones running them too
        (processes: docs/parallel.md#interrupted-calls)."""
        for future in futures:
            future.cancel()

    # -- the query engine ----------------------------------------------------------------------

    def create_job_table(
        self, fallbacks: dict[str, bool], volatile: frozenset[str] = frozenset()
    ) -> JobTable:
        """The job table of a new :class:`~dualmode.Database`: claims, latches, wait-for
        graph, memos, inputs and revisions (``docs/architecture.md#the-query-protocol``).
        *fallbacks* maps each query name to whether it has a ``cycle=`` fallback; *volatile*
        names the ``volatile=True`` ones.

        The default keeps it in this process (serial, threads). A backend whose workers are
        other processes returns a client of one table that they all reach, with ``shared``
        true; the client converts values to and from what travels.
        """
        from .query.job_table import InProcessJobTable

        table = InProcessJobTable(fallbacks, volatile)
        table.watcher = self.watcher  # latch waits join the wait-for graph
        return table

    # -- primitives: one factory per public class of dualmode.primitives ----------------------
    # ``dm.Lock()`` runs ``Lock.__new__``, which checks the arguments and calls the factory
    # below; each backend's factory returns its own subclass of the public class
    # (docs/architecture.md#the-backend-protocol). Factories are called with checked arguments.

    @abc.abstractmethod
    def create_lock(self) -> p.Lock: ...

    @abc.abstractmethod
    def create_rlock(self) -> p.RLock: ...

    @abc.abstractmethod
    def create_semaphore(self, value: int = 1) -> p.Semaphore: ...

    @abc.abstractmethod
    def create_bounded_semaphore(self, value: int = 1) -> p.BoundedSemaphore: ...

    @abc.abstractmethod
    def create_event(self) -> p.Event: ...

    @abc.abstractmethod
    def create_condition(self, lock: p.AnyLock | None = None) -> p.Condition:
        """A Condition over *lock*, or over a new RLock when None. A backend that cannot wait
        on *lock* (a lock of another backend, or one its workers cannot reach) raises
        TypeError saying which lock to use instead."""

    @abc.abstractmethod
    def create_barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> p.Barrier: ...

    @abc.abstractmethod
    def create_rwlock(self) -> p.RwLock: ...

    @abc.abstractmethod
    def create_mutex(self, value: Any = None) -> p.Mutex: ...

    @abc.abstractmethod
    def create_once_cell(self) -> p.OnceCell: ...

    @abc.abstractmethod
    def create_atomic_int(self, value: int = 0) -> p.AtomicInt: ...

    @abc.abstractmethod
    def create_worker_local(self, factory: Callable[[], Any]) -> p.WorkerLocal: ...

    @abc.abstractmethod
    def create_sharded_dict(self) -> p.ShardedDict: ...

    @abc.abstractmethod
    def create_freeze_lock(self, value: Any = None) -> p.FreezeLock: ...

    @abc.abstractmethod
    def create_queue(self, maxsize: int = 0) -> p.Queue: ...


def builds(
    cls: Callable[Concatenate[Any, Args], T],
) -> Callable[Concatenate[Any, Args], T]:
    """A ``create_*`` factory that returns ``cls(backend, *args)``, typed as ``cls`` is.

    For a backend whose primitive classes live in this process and take the backend first
    (serial, threads): ``create_lock = builds(Lock)`` in its class body names the class the
    factory builds, and mypy checks ``Lock.__init__`` against the abstract factory's signature.
    """

    def create(backend: Any, /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        return cls(backend, *args, **kwargs)

    built = getattr(cls, "__qualname__", repr(cls))
    create.__qualname__ = f"builds({built})"
    create.__doc__ = f"A new {built} of this backend."
    return create
