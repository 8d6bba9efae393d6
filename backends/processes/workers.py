"""The worker processes of the processes backend: the pool, and what runs in each worker.

Parallel work (``submit``, ``map_chunks``, ``broadcast``) runs in a pool of spawned worker
processes (a :class:`concurrent.futures.ProcessPoolExecutor`); tasks and their outcomes travel
with cloudpickle. See docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import functools
import os
import pickle
import reprlib
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, cast

import cloudpickle  # type: ignore[import-untyped]

from dualmode import by_value
from dualmode.backend import Outcome
from dualmode.errors import RemoteError, WorkerCrashed

from . import mp_internals
from .job_table import sync_job_tables
from .primitives import publish_all

if TYPE_CHECKING:
    from .backend import ProcessesBackend

__all__ = ["WorkerPool", "dumps_task", "in_worker", "task_name"]


_in_worker = False  # True in a pool worker process: nested parallel calls run inline there


def in_worker() -> bool:
    """Whether this process is a pool worker (nested parallel calls run inline there)."""
    return _in_worker


def _init_worker(backend: ProcessesBackend) -> None:
    """Start-up of a pool worker: the pool's backend is current here, and runs inline; the
    worker exits when the process that started the pool is gone (the pool's queues do not
    tell it: every worker holds their write ends)."""
    global _in_worker
    _in_worker = True
    mp_internals.exit_with_parent("dualmode-parent-watch")
    from dualmode.config import configure

    configure(backend)


def _with_worker_traceback(outcome: Outcome) -> Outcome:
    """A failure keeps its type and message; a note carries the worker's traceback text
    (notes survive pickling, unlike ``__traceback__`` and ``__cause__``). An exception that
    would not come back as itself becomes a :class:`~dualmode.RemoteError` holding its type's
    name, its message and that text."""
    ok, value = outcome
    if not ok:
        text = "".join(traceback.format_exception(value)).rstrip()
        note = f"[traceback in dualmode worker process {os.getpid()}]\n{text}"
        value.add_note(note)
        if not _comes_back(value):
            kind = type(value)
            value = RemoteError(f"{kind.__module__}.{kind.__qualname__}", str(value), text)
            value.add_note(note)
            return False, value
    return outcome


def _comes_back(exc: BaseException) -> bool:
    """Whether *exc* survives the trip to the caller: it pickles and loads again. Tried here,
    where the failure can still be named (the caller could only say that a load failed), and
    only for failures, which are rare."""
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return False
    return True


def _picklable_outcome(outcome: Outcome) -> Outcome:
    """The outcome, or a TypeError saying why its value cannot travel back (a failure's
    exception travels, or became a RemoteError: ``_with_worker_traceback``)."""
    try:
        cloudpickle.dumps(outcome)
    except Exception as exc:
        return False, TypeError(
            f"the result could not be pickled to send back from worker process {os.getpid()}: "
            f"{type(exc).__name__}: {exc}; return picklable data, or use the threads backend"
        )
    return outcome


def _run_task(payload: bytes) -> bytes:
    """Run one task in a pool worker: ``(fn, args, chunk)`` in, its Outcome(s) out.

    Both directions use cloudpickle, so lambdas, closures and dynamically made classes travel.
    The WorkerLocal values this process holds are published after every task, and the job
    tables this task published to have taken its results (``sync_job_tables``).
    """
    fn, args, is_chunk = cloudpickle.loads(payload)
    result = fn(*args)
    outcomes: list[Outcome] = result if is_chunk else [result]
    outcomes = [_with_worker_traceback(o) for o in outcomes]
    publish_all()
    sync_job_tables()
    try:
        return cast(bytes, cloudpickle.dumps(outcomes if is_chunk else outcomes[0]))
    except Exception:  # find the outcomes that cannot travel and say why, keep the rest
        fixed = [_picklable_outcome(o) for o in outcomes]
        return cast(bytes, cloudpickle.dumps(fixed if is_chunk else fixed[0]))


def unpicklable(what: str, obj: object, exc: Exception) -> TypeError:
    return TypeError(
        f"{what} ({type(obj).__module__}.{type(obj).__qualname__}) cannot be pickled to send "
        f"to a worker process: {type(exc).__name__}: {exc}. Pass picklable data (module-level "
        "functions, lambdas and closures are fine), or use the threads backend"
    )


def task_name(fn: Callable[..., Any]) -> str:
    """*fn* as messages name a task: its qualified name (a partial's function's)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or reprlib.repr(fn)


def dumps_task(
    runner: Callable[..., Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    first_item: int | None = None,
) -> bytes:
    """Pickle the task ``runner(fn, *args)``: one call, or with *first_item* a chunk (``args``
    is ``(items,)``, the first of them numbered *first_item*). A TypeError names what cannot
    travel as the caller knows it: the function, the argument or the item."""
    is_chunk = first_item is not None
    try:
        return by_value.dumps((runner, (fn, *args), is_chunk))
    except Exception as exc:
        error = exc
    parts: list[tuple[str, Any]] = [(f"the function {task_name(fn)}", fn)]
    if first_item is not None:
        parts += [(f"item {first_item + i}", item) for i, item in enumerate(args[0])]
    else:
        parts += [(f"argument {i}", arg) for i, arg in enumerate(args)]
    for what, obj in parts:
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            raise unpicklable(what, obj, exc) from exc
    raise TypeError(f"the task cannot be pickled to send to a worker process: {error}")


class _TaskFuture(Future[Any]):
    """The caller's future of a task sent to the pool (``sent``, the pool's own)."""

    sent: Future[bytes] | None = None

    def cancel(self) -> bool:
        sent = self.sent
        if sent is not None and not sent.cancel():
            return False  # running (or done) in a worker: it finishes there
        return super().cancel()


class WorkerPool:
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
            if executor is None or mp_internals.is_broken(executor):
                mp_internals.leave_if_rerunning_main()
                # The workers' initializer carries the backend, which starts its coordinator
                # when pickled: start it here, so a failure is raised from here.
                self._backend._link()
                if executor is not None:
                    # Its manager thread fails every future it holds with BrokenProcessPool;
                    # cancelling would race that, and turn another caller's into CancelledError.
                    executor.shutdown(wait=False)
                executor = mp_internals.worker_pool(
                    self._backend.workers, initializer=_init_worker, initargs=(self._backend,)
                )
                self._executor = executor
            return executor

    def submit(self, payload: bytes, what: str = "a task") -> Future[Any]:
        """Send one pickled task; the returned future holds its unpickled Outcome(s), and
        cancelling it cancels the task in the pool if it has not started. *what* names the
        task in the WorkerCrashed of a worker that dies running it."""
        result = _TaskFuture()
        try:
            sent = self._live_executor().submit(_run_task, payload)
        except BrokenProcessPool:  # broke between the check and the submit: once more
            sent = self._live_executor().submit(_run_task, payload)
        result.sent = sent
        sent.add_done_callback(functools.partial(self._settle, result, what))
        return result

    def stop_workers(self) -> None:
        """Kill the worker processes now, whatever they run: their tasks fail with
        WorkerCrashed, and the next call starts a new pool (see ``_live_executor``)."""
        with self._lock:
            executor = self._executor
        if executor is not None:
            mp_internals.kill_workers(executor)

    @staticmethod
    def _settle(result: Future[Any], what: str, sent: Future[bytes]) -> None:
        if sent.cancelled():
            Future.cancel(result)
            return
        try:
            result.set_result(cloudpickle.loads(sent.result()))
        except BrokenProcessPool as exc:
            result.set_exception(
                WorkerCrashed(
                    f"a dualmode worker process died while running {what} (killed, out of "
                    f"memory, or os._exit in the task); the pool is replaced at the next call: "
                    f"{exc}"
                )
            )
        except BaseException as exc:
            result.set_exception(exc)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
