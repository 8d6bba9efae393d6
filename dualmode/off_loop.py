"""A blocking wait from async code, run off the event loop: the async twins' default.

A backend whose primitives have no waiters of their own for tasks (processes: the object lives
in the coordinator, and its waits are round trips) gets its ``async_acquire``, ``async_wait``...
from here. The wait runs on a helper thread (anyio's, so asyncio and trio both work) in slices
of :data:`SLICE` seconds, so a cancelled or timed-out caller never leaves a thread blocked for
long. Cancellation is immediate for the task; the slice in flight finishes on its own thread,
and if it got what the task had stopped waiting for (the lock, a permit), it gives it back
itself (``undo``): whichever of the two finishes last undoes, under a small lock, so nothing
is ever held by a caller that has gone (docs/async.md#cancellation).

Fairness is the hosted object's: between slices a waiter has no place in a queue.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["NOT_YET", "SLICE", "async_timeout", "get_off_loop", "wait_off_loop"]

T = TypeVar("T")

SLICE = 0.05  # seconds: the most a helper thread waits past its caller's cancellation


def async_timeout(timeout: float | None) -> float:
    """An async twin's *timeout* (None: no limit; else seconds >= 0) as the seconds to wait,
    -1 for no limit. Raises TypeError or ValueError naming what was wrong."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be None (no limit) or a number of seconds, got {timeout!r} "
            f"({type(timeout).__name__})"
        )
    if not timeout >= 0:  # also NaN
        raise ValueError(f"timeout must be None (no limit) or >= 0 seconds, got {timeout!r}")
    return float(timeout)


class _NotYet:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_YET"


#: What an attempt returns when its slice ended without getting what it waited for.
NOT_YET: Any = _NotYet()


class _Slice:
    """One slice of the wait, on its helper thread; see the module's docstring."""

    __slots__ = ("_attempt", "_done", "_gone", "_guard", "_undo", "got")

    def __init__(self, attempt: Callable[[float], Any], undo: Callable[[Any], object] | None):
        self._attempt = attempt
        self._undo = undo
        self._guard = threading.Lock()
        self._done = self._gone = False
        self.got: Any = NOT_YET

    def run(self, seconds: float) -> None:
        got = self._attempt(seconds)
        with self._guard:
            self._done, self.got = True, got
            gone = self._gone
        if gone and got is not NOT_YET and self._undo is not None:
            self._undo(got)

    def abandon(self) -> None:
        """The caller has gone (cancelled): whatever this slice got is given back."""
        with self._guard:
            self._gone = True
            got = self.got if self._done else NOT_YET
        if got is not NOT_YET and self._undo is not None:
            # On a thread of its own: an undo may wait (a Queue's item put back into a full
            # queue), and this runs on the event loop, in the cancelled task.
            threading.Thread(target=self._undo, args=(got,), daemon=True).start()


async def get_off_loop(
    attempt: Callable[[float], T],
    undo: Callable[[T], object] | None,
    timeout: float | None,
) -> T:
    """Call ``attempt(seconds)`` (a blocking wait of at most *seconds*, returning what it got
    or :data:`NOT_YET`) on helper threads until it gets something: that; or until *timeout*
    seconds (None: no limit) pass: NOT_YET. Cancelled, it re-raises at once, and what a slice
    still in flight gets is given back with ``undo(got)`` (None: it cannot be; the docs of the
    operation say so)."""
    import anyio
    import anyio.to_thread

    limit = async_timeout(timeout)
    deadline = math.inf if limit < 0 else anyio.current_time() + limit
    while True:
        seconds = min(SLICE, max(0.0, deadline - anyio.current_time()))
        part = _Slice(attempt, undo)
        try:
            await anyio.to_thread.run_sync(part.run, seconds, abandon_on_cancel=True)
        except BaseException:
            part.abandon()
            raise
        if part.got is not NOT_YET or anyio.current_time() >= deadline:
            return cast(T, part.got)


async def wait_off_loop(
    attempt: Callable[[float], bool],
    undo: Callable[[], object] | None,
    timeout: float | None,
) -> bool:
    """:func:`get_off_loop` for a wait that succeeds or not (``acquire``, ``wait``): True once
    ``attempt(seconds)`` returns True, False once *timeout* seconds passed first; cancelled,
    ``undo()`` gives back what a slice got after its caller left."""
    got = await get_off_loop(
        lambda seconds: True if attempt(seconds) else NOT_YET,
        None if undo is None else (lambda _got: undo()),
        timeout,
    )
    return got is not NOT_YET
