"""The abstract :class:`Backend`: one class, implemented in full by every backend.

The public API in :mod:`dualmode` never does work itself: it asks for the backend in force
(``dm.current()`` or a ``backend=`` argument) and calls one of the methods below. A backend
module (``dualmode.backends.serial``, ``.threads``, ``.processes``, or a third party's) subclasses
:class:`Backend`, implements every abstract method, and registers the class under the
entry-point group ``dualmode.backends``.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, Future
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    from . import primitives as p
    from .job_table import JobTable

T = TypeVar("T")

__all__ = [
    "Backend",
    "LocalPrimitives",
    "Outcome",
    "capture",
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


def check_workers(workers: object, *, source: str = "workers") -> int | None:
    """Return *workers* as a positive int (or None for the default); raise ConfigError otherwise."""
    if workers is None:
        return None
    if isinstance(workers, str):
        try:
            workers = int(workers.strip())
        except ValueError:
            raise ConfigError(
                f"{source}={workers!r} is not a worker count: give a positive integer such as 2, "
                "or leave it unset for the backend's default"
            ) from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        default = "leave it unset" if source != "workers" else "None"
        raise ConfigError(
            f"{source}={workers!r} is not a worker count: give a positive integer such as 2, "
            f"or {default} for the backend's default"
        )
    return workers


class Backend(abc.ABC):
    """One execution model: where work runs and what the primitives are.

    Attributes:
        name: the name it is registered and selected by (``"threads"``).
        parallel: True when work can run at the same time on several workers, so primitives
            are real locks; False for the serial backend, whose primitives are borrow flags.
        workers: how many workers run parallel work (1 for serial).

    A backend owns what it starts (threads, processes, a cluster client). :meth:`close` stops
    all of it and is idempotent; a backend is also a context manager that closes on exit.
    """

    name: ClassVar[str]
    parallel: ClassVar[bool]

    def __init__(self, workers: int | None = None) -> None:
        checked = check_workers(workers)
        self._workers = checked if checked is not None else self.default_workers()
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
    def closed(self) -> bool:
        return self._closed

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
        return f"<{type(self).__name__} name={self.name!r} workers={self._workers}{state}>"

    # -- running work: the protocol behind dualmode.parallel -----------------------------------
    # A backend runs calls and reports Outcomes; dualmode.parallel does the rest (chunking,
    # ordering, ParallelError, progress) once, for every backend.

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

    # -- the query engine ----------------------------------------------------------------------

    def create_job_table(
        self, fallbacks: dict[str, bool], volatile: frozenset[str] = frozenset()
    ) -> JobTable:
        """The job table of a new :class:`~dualmode.Database` (design section 5): claims,
        latches, wait-for graph, memos, inputs and revisions. *fallbacks* maps each query name
        to whether it has a ``cycle=`` fallback; *volatile* names the ``volatile=True`` ones.

        The default keeps it in this process (serial, threads). A backend whose workers are
        other processes returns a client of a table they all reach, with ``remote = True`` and
        ``pack``/``unpack`` methods that turn values into bytes and back.
        """
        from .job_table import JobTable

        return JobTable(fallbacks, volatile)

    # -- primitives: one factory per public class of dualmode.primitives ----------------------

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
    def create_condition(self, lock: p.Lock | p.RLock | None = None) -> p.Condition: ...

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


class LocalPrimitives:
    """The ``create_*`` factories of a backend whose primitives live in this process, as classes
    of one module named like the public ones and built as ``Class(backend, *args)``.

    serial and threads mix this in before :class:`Backend` and set ``primitives`` to their own
    module, so ``dm.Lock()`` under the threads backend is ``threads.Lock(backend)``.
    """

    primitives: ClassVar[ModuleType]

    def create_lock(self) -> p.Lock:
        return self.primitives.Lock(self)  # type: ignore[no-any-return]

    def create_rlock(self) -> p.RLock:
        return self.primitives.RLock(self)  # type: ignore[no-any-return]

    def create_semaphore(self, value: int = 1) -> p.Semaphore:
        return self.primitives.Semaphore(self, value)  # type: ignore[no-any-return]

    def create_bounded_semaphore(self, value: int = 1) -> p.BoundedSemaphore:
        return self.primitives.BoundedSemaphore(self, value)  # type: ignore[no-any-return]

    def create_event(self) -> p.Event:
        return self.primitives.Event(self)  # type: ignore[no-any-return]

    def create_condition(self, lock: p.Lock | p.RLock | None = None) -> p.Condition:
        return self.primitives.Condition(self, lock)  # type: ignore[no-any-return]

    def create_barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> p.Barrier:
        return self.primitives.Barrier(self, parties, action, timeout)  # type: ignore[no-any-return]

    def create_rwlock(self) -> p.RwLock:
        return self.primitives.RwLock(self)  # type: ignore[no-any-return]

    def create_mutex(self, value: Any = None) -> p.Mutex:
        return self.primitives.Mutex(self, value)  # type: ignore[no-any-return]

    def create_once_cell(self) -> p.OnceCell:
        return self.primitives.OnceCell(self)  # type: ignore[no-any-return]

    def create_atomic_int(self, value: int = 0) -> p.AtomicInt:
        return self.primitives.AtomicInt(self, value)  # type: ignore[no-any-return]

    def create_worker_local(self, factory: Callable[[], Any]) -> p.WorkerLocal:
        return self.primitives.WorkerLocal(self, factory)  # type: ignore[no-any-return]

    def create_sharded_dict(self) -> p.ShardedDict:
        return self.primitives.ShardedDict(self)  # type: ignore[no-any-return]

    def create_freeze_lock(self, value: Any = None) -> p.FreezeLock:
        return self.primitives.FreezeLock(self, value)  # type: ignore[no-any-return]

    def create_queue(self, maxsize: int = 0) -> p.Queue:
        return self.primitives.Queue(self, maxsize)  # type: ignore[no-any-return]
