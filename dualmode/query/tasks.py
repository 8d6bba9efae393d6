"""Async bodies' place in the engine: a task's own state, and the driver of a body's steps.

The engine keeps one :class:`~dualmode.query.hits.ThreadState` per thread: its frames record
what a running body reads, and the thread's bound queries serve hits from its caches. Tasks
interleave on one thread, so each task that executes an async body gets a
:class:`TaskState` of its own (its own frames, caches and id in the wait-for graph), and
:class:`Stepper` switches it in (:func:`swap`) around each step of the body's coroutine and
out again before the step's yield reaches the event loop (asyncio and trio both accept the
yields forwarded). A sync body that a task's body asks for runs on a worker under a
:class:`TaskState` with the task's id, so a cycle through the task and that worker is found.

A sync caller of an async query runs its body to the end on a private asyncio loop in the
calling thread (:func:`run_body`), with the thread's own state: the thread is the body's
owner, as for a sync body. See ``docs/architecture.md#async-queries``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Coroutine, Generator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import sniffio

from .hits import ThreadState

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = [
    "LoopRunning",
    "Stepper",
    "TaskState",
    "here",
    "in_body",
    "loop_here",
    "no_loop_here",
    "on_private_loop",
    "run_body",
    "swap",
]

# Task ids are (pid, -n): never a thread's identifier, never reused (a worker may still run
# a body under a cancelled task's id). Counted under a lock: next() on a shared iterator is
# not atomic on free-threaded builds. Taken once per task that misses, off the hit path.
_ids = itertools.count(1)
_ids_lock = threading.Lock()

# The state of the body the current task is running, and that task (tasks it starts inherit
# the entry: their edges go to its frame, their claims are their own).
_running: ContextVar[tuple[ThreadState, object] | None] = ContextVar(
    "dualmode_query_running", default=None
)

# True in the tasks of a sync caller's private loop (run_body): its thread blocks for the body
# anyway, so the sync bodies they claim run there rather than wait for a worker.
_private: ContextVar[bool] = ContextVar("dualmode_query_private_loop", default=False)


class TaskState(ThreadState):
    """The state of one task's queries (or of a sync body run for it on a worker): its own
    frames, caches and id, hosted by one thread, whose bindings and lock it shares. It points
    the bindings at its caches only while :func:`swap` has made it the thread's state."""

    __slots__ = ("active",)

    def __init__(
        self, rt: Runtime, host: ThreadState, revision: int, ident: tuple[int, int] | None = None
    ) -> None:
        super().__init__(rt, host.names, revision)
        if ident is None:
            with _ids_lock:
                ident = (os.getpid(), -next(_ids))
        self.id = ident
        self.lock = host.lock  # Runtime.install and learn_revision: one lock per binding list
        self.bound = host.bound
        self.active = False

    def switch(self) -> None:
        if self.active:
            super().switch()


def here(rt: Runtime) -> ThreadState:
    """The state this thread serves *rt*'s queries with now (made if it has none)."""
    try:
        state: ThreadState = rt.local.state
    except AttributeError:
        state = rt._new_thread()
    return state


def swap(rt: Runtime, state: ThreadState) -> ThreadState:
    """Make *state* this thread's state in *rt* (its bindings pointed at its caches, its
    frames recording reads); returns the one it replaced, to swap back."""
    previous = here(rt)
    if previous is not state:
        if isinstance(previous, TaskState):
            previous.active = False
        rt.local.state = state
        if isinstance(state, TaskState):
            state.active = True
        rt.install(state)
    return previous


def current_task() -> object:
    """The running task (asyncio's or trio's)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_task()
    import asyncio

    return asyncio.current_task()


def in_body(rt: Runtime) -> tuple[ThreadState, ThreadState] | None:
    """When the calling task runs inside an async body of *rt*'s database: the state its
    claims are made with (the body's; for a task the body started, one of its own) and the
    state whose innermost frame records the edge. Else None."""
    entry = _running.get()
    if entry is None:
        return None
    state, task = entry
    if state.rt is not rt or not state.stack:
        return None
    if task is current_task():
        return state, state
    return TaskState(rt, here(rt), state.revision), state


class Stepper:
    """``await Stepper(state, coro)``: *coro*'s result, each of its steps run with *state*
    swapped in on this thread and recorded as the running body of the current task."""

    __slots__ = ("_coro", "_state")

    def __init__(self, state: ThreadState, coro: Coroutine[Any, Any, Any]) -> None:
        self._state = state
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, state = self._coro, self._state
        rt = state.rt
        token = _running.set((state, current_task()))
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                previous = swap(rt, state)
                try:
                    yielded = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value
                finally:
                    swap(rt, previous)
                try:
                    value, error = (yield yielded), None
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # a cancellation: delivered into the body
                    value, error = None, exc
        finally:
            with contextlib.suppress(ValueError):  # closed by the collector, elsewhere
                _running.reset(token)


class LoopRunning(RuntimeError):
    """An async query called without await on a thread whose event loop runs. Never
    memoized: it is about where the query was asked, not its value."""


def on_private_loop() -> bool:
    """Whether the calling task runs on a sync caller's private loop (:func:`run_body`)."""
    return _private.get()


def loop_here() -> bool:
    """Whether an event loop (asyncio's, trio's) runs in this thread."""
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def no_loop_here(name: str) -> None:
    """Raise :class:`LoopRunning` if an event loop runs in this thread: a sync call of async
    query *name* there could only wait by blocking it (and a loop cannot run inside
    another)."""
    if loop_here():
        raise LoopRunning(
            f"async query {name!r} called without await on a thread that runs an event loop: "
            f"use `await db.{name}.async_get(...)` there (a sync call would block the loop)"
        )


def run_body(thread: ThreadState, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an async body's *coro* to its end on a private asyncio loop in this thread, for a
    sync caller (*thread*: its state, which owns the claim and records the reads). A private
    loop per call, rather than one the database keeps: it needs no thread or shutdown of its
    own, works the same in a worker process, and the caller blocks anyway."""
    import asyncio

    async def main() -> Any:
        _running.set((thread, current_task()))
        _private.set(True)
        return await coro

    return asyncio.run(main())
