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

if TYPE_CHECKING:
    from .database import _QueryDescriptor
    from .runtime import Runtime

__all__ = ["execute"]

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
    Exception (Cancelled, KeyboardInterrupt) propagates."""
    frame.deps.clear()  # what verification read is not the body's
    frame.child_time = 0.0
    frame.durability = HIGH
    start = time.perf_counter()
    try:
        value = descriptor.fn(rt.db, *key)
        state = OK
    except Exception as exc:
        value, state = exc, ERROR
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
