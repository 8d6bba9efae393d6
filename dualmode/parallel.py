"""Parallel iteration and structured concurrency: rustc's ``par_map``, ``join``, ``scope``,
``broadcast``, on whichever backend is in force.

The logic that makes every backend give the same results lives here, once: items are cut into
chunks (order never depends on the cut), each chunk runs every item and records a value or an
exception per item, and only when every item has run are failures raised together as one
:class:`~dualmode.ParallelError`, in item order. A backend only runs tasks
(:meth:`Backend.submit`, :meth:`Backend.map_chunks`, :meth:`Backend.broadcast`) and waits for
them (:meth:`Backend.wait`), where a worker that waits runs queued tasks, so nesting never
deadlocks.
"""

from __future__ import annotations

import math
import reprlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from .backend import Backend, Outcome, capture
from .config import BackendSpec, resolve_backend
from .errors import ParallelError
from .errors import check_callable as _check_callable
from .progress import Progress, Reporter

__all__ = [
    "Scope",
    "TaskHandle",
    "async_join",
    "async_par_for_each",
    "async_par_map",
    "auto_chunksize",
    "broadcast",
    "join",
    "par_for_each",
    "par_map",
    "run_in_worker",
    "scope",
]

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")

# Chunks per worker when chunksize=None: enough to balance uneven items (a worker that draws
# slow items hands the rest to others), few enough that per-chunk dispatch (and, on processes,
# pickling) stays a small fraction of the work. Chosen with benchmarks/bench_parallel.py.
CHUNKS_PER_WORKER = 4


def auto_chunksize(n_items: int, workers: int) -> int:
    """The chunk size ``par_map`` uses when ``chunksize=None``."""
    return max(1, math.ceil(n_items / (workers * CHUNKS_PER_WORKER)))


def _check_chunksize(chunksize: object) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(
            f"chunksize must be a positive integer, or None to choose automatically; "
            f"got {chunksize!r}"
        )


def _listed(call: str, items: object) -> list[Any]:
    try:
        iterator = iter(items)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"{call}() argument 'items' must be an iterable, "
            f"got {type(items).__name__}: {reprlib.repr(items)}"
        ) from None
    return list(iterator)


def _wait_all(
    backend: Backend, futures: Sequence[Future[Any]], sizes: Sequence[int], reporter: Reporter
) -> None:
    """Wait for every future, reporting progress by items as chunks finish."""
    size_of = dict(zip(map(id, futures), sizes, strict=True))
    pending: set[Future[Any]] = set(futures)
    while pending:
        done, pending = backend.wait(pending, return_when=FIRST_COMPLETED)
        reporter.advance(sum(size_of[id(f)] for f in done))


def _settled(future: Future[T], lost: Callable[[Exception], T]) -> T:
    """The future's result; a task lost with its worker (WorkerCrashed...) becomes lost(exc)."""
    try:
        return future.result()
    except Exception as exc:
        return lost(exc)


def _gather(chunks: Iterable[tuple[int, list[Outcome]]], what: str, total: int) -> list[Any]:
    """Values in item order; every failure, in item order, raised as one ParallelError."""
    values: list[Any] = []
    failures: list[Exception] = []
    indices: list[int] = []
    for start, outcomes in chunks:
        for offset, (ok, value) in enumerate(outcomes):
            if ok:
                values.append(value)
            else:
                failures.append(value)
                indices.append(start + offset)
    if failures:
        raise ParallelError(f"{len(failures)} of {total} items of {what} failed", failures, indices)
    return values


def par_map(
    fn: Callable[[Any], T],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    progress: Progress = False,
    backend: BackendSpec | None = None,
) -> list[T]:
    """``[fn(x) for x in items]``, computed in parallel on the backend's workers.

    Results keep the order of *items*, whatever the chunking. Every item runs, even after a
    failure; then all failures are raised together as :class:`ParallelError` in item order
    (``.indices`` gives their positions). ``chunksize=None`` picks about
    ``CHUNKS_PER_WORKER`` chunks per worker. ``progress=True`` draws a progress bar on
    stderr: rich's when rich is installed (``pip install rich``), else a plain text line; a
    callable instead receives ``(done, total)`` as chunks finish, ending with
    ``(total, total)``. On the processes backend *fn* and the items travel with cloudpickle:
    an item that cannot be pickled raises TypeError naming its index before any work starts.

    Raises TypeError before any work starts when *fn* is not callable or *items* is not
    iterable, and ValueError for a bad *chunksize*.
    """
    return _par_map("par_map", fn, items, chunksize, progress, backend)


def _par_map(
    call: str,
    fn: Callable[[Any], T],
    items: Iterable[Any],
    chunksize: int | None,
    progress: Progress,
    backend: BackendSpec | None,
) -> list[T]:
    started = _Map(call, fn, items, chunksize, progress, backend)
    try:
        with _stopped_if_interrupted(started.backend, started.futures):
            _wait_all(started.backend, started.futures, started.sizes, started.reporter)
    finally:
        started.reporter.close()
    return started.results()


@contextmanager
def _stopped_if_interrupted(backend: Backend, futures: Sequence[Future[Any]]) -> Iterator[None]:
    """A caller interrupted while it waits for *futures* (KeyboardInterrupt, SystemExit: the
    only exceptions a wait lets through) stops their work before it re-raises
    (docs/parallel.md#interrupted-calls)."""
    try:
        yield
    except BaseException:
        backend.abandon(futures)
        raise


class _Map:
    """One ``par_map`` call, its chunks handed to the backend: what its sync and async
    versions share."""

    def __init__(
        self,
        call: str,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        chunksize: int | None,
        progress: Progress,
        backend: BackendSpec | None,
    ) -> None:
        _check_callable(call, "fn", fn, items)
        listed = _listed(call, items)
        self.backend = resolved = resolve_backend(backend)
        if chunksize is None:
            chunksize = auto_chunksize(len(listed), resolved.workers)
        _check_chunksize(chunksize)
        self.call, self.total = call, len(listed)
        self.starts = range(0, len(listed), chunksize)
        chunks = [listed[start : start + chunksize] for start in self.starts]
        self.sizes = [len(chunk) for chunk in chunks]
        self.futures = resolved.map_chunks(fn, chunks)
        self.reporter = Reporter(progress, len(listed), getattr(fn, "__name__", call))

    def results(self) -> list[Any]:
        """Once every chunk is done: the values in item order, or one ParallelError."""
        # A chunk lost as a whole (its worker died) counts as one failure, at its first item.
        chunks_done = (
            (start, _settled(future, lambda exc: [(False, exc)]))
            for start, future in zip(self.starts, self.futures, strict=True)
        )
        return _gather(chunks_done, self.call, self.total)


def par_for_each(
    fn: Callable[[Any], object],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    progress: Progress = False,
    backend: BackendSpec | None = None,
) -> None:
    """Run ``fn(x)`` for every item in parallel; errors as in :func:`par_map`."""
    _par_map("par_for_each", fn, items, chunksize, progress, backend)


def _lost(exc: Exception) -> Outcome:
    return False, exc


def join(
    fa: Callable[[], A], fb: Callable[[], B], *, backend: BackendSpec | None = None
) -> tuple[A, B]:
    """Run ``fa()`` and ``fb()`` potentially in parallel; return ``(fa(), fb())``.

    As in rayon, ``fb`` is handed to a worker and the caller runs ``fa`` itself, then waits
    for ``fb`` (a worker that waits runs queued work, so nested joins never deadlock). Both
    always run; if either raises, a :class:`ParallelError` holds the failures, ``fa``'s first
    (index 0, ``fb``'s index 1). TypeError, before either runs, if one is not callable.
    """
    _check_callable("join", "fa", fa)
    _check_callable("join", "fb", fb)
    resolved = resolve_backend(backend)
    future_b = resolved.submit(fb)
    with _stopped_if_interrupted(resolved, [future_b]):
        a = capture(fa)
        resolved.wait([future_b])
    a_value, b_value = _gather([(0, [a, _settled(future_b, _lost)])], "join", 2)
    return a_value, b_value


# -- from async code: the same calls, awaited ---------------------------------------------------
# The work runs on the backend's workers (serial: on the calling thread, as in sync code); the
# task waits on its event loop (asyncio or trio) for the futures to finish, never blocking it.
# Cancelled, a call cancels what has not started; what runs finishes on its worker, its result
# dropped (docs/async.md#parallel-iteration-from-async-code).


async def _finish_async(
    futures: Sequence[Future[Any]], sizes: Sequence[int], reporter: Reporter
) -> None:
    from .parking_lot import wait_done

    size_of = dict(zip(map(id, futures), sizes, strict=True))
    pending = list(futures)
    try:
        while pending:
            await wait_done(pending, first=True)
            finished = [f.done() for f in pending]  # once each: one may finish meanwhile
            done = [f for f, is_done in zip(pending, finished, strict=True) if is_done]
            pending = [f for f, is_done in zip(pending, finished, strict=True) if not is_done]
            reporter.advance(sum(size_of[id(f)] for f in done))
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    finally:
        reporter.close()


async def async_par_map(
    fn: Callable[[Any], T],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    progress: Progress = False,
    backend: BackendSpec | None = None,
) -> list[T]:
    """:func:`par_map` from async code (asyncio or trio): the same results, order and
    :class:`ParallelError`, computed on the backend's workers while the event loop runs on.
    Cancelled, chunks not started are not run (those running finish, their results dropped).
    """
    return await _async_par_map("async_par_map", fn, items, chunksize, progress, backend)


async def async_par_for_each(
    fn: Callable[[Any], object],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    progress: Progress = False,
    backend: BackendSpec | None = None,
) -> None:
    """:func:`par_for_each` from async code; see :func:`async_par_map`."""
    await _async_par_map("async_par_for_each", fn, items, chunksize, progress, backend)


async def _async_par_map(
    call: str,
    fn: Callable[[Any], T],
    items: Iterable[Any],
    chunksize: int | None,
    progress: Progress,
    backend: BackendSpec | None,
) -> list[T]:
    """:func:`_par_map`, awaited: the chunks' futures waited for on the loop."""
    started = _Map(call, fn, items, chunksize, progress, backend)
    await _finish_async(started.futures, started.sizes, started.reporter)
    return started.results()


async def async_join(
    fa: Callable[[], A], fb: Callable[[], B], *, backend: BackendSpec | None = None
) -> tuple[A, B]:
    """:func:`join` from async code: ``(fa(), fb())``, both on the backend's workers (not on
    the event loop's thread), failures as one :class:`ParallelError` (``fa``'s first)."""
    _check_callable("async_join", "fa", fa)
    _check_callable("async_join", "fb", fb)
    resolved = resolve_backend(backend)
    futures = [resolved.submit(fa), resolved.submit(fb)]
    await _finish_async(futures, [1, 1], Reporter(False, 2, "async_join"))
    a_value, b_value = _gather([(0, [_settled(f, _lost) for f in futures])], "async_join", 2)
    return a_value, b_value


async def run_in_worker(
    fn: Callable[..., T], /, *args: Any, backend: BackendSpec | None = None
) -> T:
    """``fn(*args)`` on one of the backend's workers, awaited: its value, or its exception
    raised here (as ``anyio.to_thread.run_sync``, on dualmode's workers: a thread of the
    threads pool, a worker process, the calling thread on serial). Cancelled before it
    starts, it does not run; once running, it finishes on its worker, its result dropped."""
    _check_callable("run_in_worker", "fn", fn)
    future = resolve_backend(backend).submit(fn, *args)
    await _finish_async([future], [1], Reporter(False, 1, "run_in_worker"))
    ok, value = _settled(future, _lost)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class TaskHandle(Generic[T]):
    """A task started by :meth:`Scope.spawn`."""

    __slots__ = ("_backend", "_future")

    def __init__(self, backend: Backend, future: Future[Outcome]) -> None:
        self._backend = backend
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> T:
        """Wait for the task; return its value or raise its exception."""
        ok, value = self._outcome()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _outcome(self) -> Outcome:
        self._backend.wait([self._future])
        return _settled(self._future, _lost)


class Scope:
    """Spawns tasks that are all joined before the ``with scope()`` block exits."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._handles: list[TaskHandle[Any]] = []
        self._lock = threading.Lock()  # tasks may spawn into the scope from workers
        self._open = True

    def spawn(self, fn: Callable[..., T], *args: Any) -> TaskHandle[T]:
        """Start ``fn(*args)`` on a worker and return its handle.

        Raises TypeError if *fn* is not callable, RuntimeError once the scope has exited.
        """
        _check_callable("Scope.spawn", "fn", fn)
        if not self._open:
            raise RuntimeError("this scope has exited; spawn inside the `with scope()` block")
        handle: TaskHandle[T] = TaskHandle(self._backend, self._backend.submit(fn, *args))
        with self._lock:
            self._handles.append(handle)
        return handle

    def _join_all(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while True:  # a running task may still spawn more
            with self._lock:
                batch = self._handles[len(outcomes) :]
                if not batch:
                    self._open = False
                    return outcomes
            outcomes.extend(handle._outcome() for handle in batch)

    def _abandon(self) -> None:
        """Stop every task of the scope: the block or its join was interrupted."""
        with self._lock:
            self._open = False
            handles = list(self._handles)
        self._backend.abandon([handle._future for handle in handles])


@contextmanager
def scope(*, backend: BackendSpec | None = None) -> Iterator[Scope]:
    """``with dm.scope() as s: h = s.spawn(fn, *args)``; every task is joined at block exit.

    A failing task never loses another's result: each handle keeps its own. At exit, if any
    task failed, one :class:`ParallelError` holds the failures in spawn order, ``.indices``
    giving each one's spawn position; if the block itself raised, its exception comes first,
    with index -1.
    """
    spawned = Scope(resolve_backend(backend))
    body_error: Exception | None = None
    try:
        yield spawned
    except Exception as exc:
        body_error = exc
    except BaseException:  # interrupted: the tasks stop, unjoined (_stopped_if_interrupted)
        spawned._abandon()
        raise
    try:
        outcomes = spawned._join_all()
    except BaseException:
        spawned._abandon()
        raise
    failed = [(index, value) for index, (ok, value) in enumerate(outcomes) if not ok]
    if failed:
        errors = [exc for _, exc in failed]
        indices = [index for index, _ in failed]
        if body_error is not None:
            errors.insert(0, body_error)
            indices.insert(0, -1)
        raise ParallelError(
            f"{len(failed)} of {len(outcomes)} tasks of scope failed", errors, indices
        ) from body_error
    if body_error is not None:
        raise body_error


def broadcast(fn: Callable[[], T], *, backend: BackendSpec | None = None) -> list[T]:
    """Run ``fn()`` once on every worker; results in worker order (serial: one result).

    Every worker runs it even if some fail; failures come as one :class:`ParallelError`
    (``.indices``: the workers). TypeError, before any worker runs, if *fn* is not callable.
    """
    _check_callable("broadcast", "fn", fn)
    resolved = resolve_backend(backend)
    futures = resolved.broadcast(fn)
    with _stopped_if_interrupted(resolved, futures):
        resolved.wait(futures)
    outcomes = [_settled(future, _lost) for future in futures]
    return _gather([(0, outcomes)], "broadcast", len(outcomes))
