"""Execute: run a claimed query's body, recording what it reads, into a new memo.

The step after a failed verification (or for a key never computed): see
``dualmode.query.runtime`` and ``docs/architecture.md#the-query-protocol``. The body runs on
the thread that claimed the key, inline, inside the frame that thread pushed, so every query
and input it reads is recorded as a dependency edge of this memo.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .hits import Frame, ThreadState
from .memo import HIGH, LOW, Memo, MemoState, lookup
from .tasks import LoopRunning, Stepper, no_loop_here, run_body

if TYPE_CHECKING:
    from .database import _QueryDescriptor
    from .runtime import Runtime

__all__ = ["async_execute", "execute"]

OK, ERROR = MemoState.OK, MemoState.ERROR  # globals: see dualmode.query.job_table


def execute(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    thread: ThreadState,
    frame: Frame,
) -> tuple[Memo, float, float]:
    """Run ``descriptor(db, *key)`` in *frame*, the innermost of *thread*'s stack (the caller
    pushed it and pops it): its result as a memo (OK, or ERROR with the Exception it raised),
    and the seconds it took with and without the queries it executed in turn. Anything but an
    Exception (Cancelled, KeyboardInterrupt) propagates, and so does
    :class:`~dualmode.query.tasks.LoopRunning` (an async query called without await on an
    event loop's thread: a mistake of the caller's place, not the body's result). An async
    body runs to its end on an event loop of this thread's own (``tasks.run_body``), and
    raises LoopRunning where one runs already."""
    if descriptor.is_async:
        no_loop_here(descriptor.name)
    start = _start(frame)
    try:
        value = descriptor.fn(rt.db, *key)
        if descriptor.is_async:
            value = run_body(thread, value)
        state = OK
    except LoopRunning:
        raise  # where it was asked, not what it computes: abandoned, not memoized
    except Exception as exc:
        value, state = exc, ERROR
    return _result(rt, descriptor, thread, frame, start, state, value)


async def async_execute(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    thread: ThreadState,
    frame: Frame,
) -> tuple[Memo, float, float]:
    """:func:`execute` of an async body from async code: it runs on the running event loop,
    *thread* (a task's state) switched in around each of its steps (``tasks.Stepper``). A
    cancellation (anything but an Exception) propagates, LoopRunning too."""
    start = _start(frame)
    body = Stepper(thread, descriptor.fn(rt.db, *key))
    try:
        value, state = await body, OK
    except LoopRunning:
        raise
    except Exception as exc:
        value, state = exc, ERROR
    return _result(rt, descriptor, thread, frame, start, state, value)


def _start(frame: Frame) -> float:
    """Reset *frame* for a run of the body; the time it starts."""
    frame.deps.clear()  # what verification read is not the body's
    frame.child_time = 0.0
    frame.durability = HIGH
    return time.perf_counter()


def _result(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    thread: ThreadState,
    frame: Frame,
    start: float,
    state: MemoState,
    value: Any,
) -> tuple[Memo, float, float]:
    """The run's memo, and the seconds it took with and without the queries it executed."""
    elapsed = time.perf_counter() - start
    if len(thread.stack) > 1:
        thread.stack[-2].child_time += elapsed  # the query that asked for this one
    revision = thread.revision
    durability = LOW if descriptor.volatile else _durability(rt, frame, thread)
    memo = Memo(state, value, tuple(frame.deps), revision, revision, durability)
    return memo, elapsed, elapsed - frame.child_time


def _durability(rt: Runtime, frame: Frame, thread: ThreadState) -> int:
    """The lowest durability among what the frame read (inputs counted as they were read)."""
    durability = frame.durability
    for name, key in frame.deps:
        if durability == LOW:
            break
        if name in rt.inputs:
            continue
        memo = lookup(thread.memos[rt.index[name]], key)
        durability = LOW if memo is None else min(durability, memo.durability)
    return durability
