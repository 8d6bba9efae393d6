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

__all__ = ["SLICE", "async_timeout", "wait_off_loop"]

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


class _Slice:
    """One slice of the wait, on its helper thread; see the module's docstring."""

    __slots__ = ("_attempt", "_done", "_gone", "_guard", "_undo", "got")

    def __init__(self, attempt: Callable[[float], bool], undo: Callable[[], object] | None):
        self._attempt = attempt
        self._undo = undo
        self._guard = threading.Lock()
        self._done = self._gone = False
        self.got = False

    def run(self, seconds: float) -> None:
        got = self._attempt(seconds)
        with self._guard:
            self._done, self.got = True, got
            gone = self._gone
        if gone and got and self._undo is not None:
            self._undo()

    def abandon(self) -> None:
        """The caller has gone (cancelled): whatever this slice got is given back."""
        with self._guard:
            self._gone = True
            undo = self._done and self.got
        if undo and self._undo is not None:
            self._undo()


async def wait_off_loop(
    attempt: Callable[[float], bool],
    undo: Callable[[], object] | None,
    timeout: float | None,
) -> bool:
    """Call ``attempt(seconds)`` (a blocking wait of at most *seconds*: True when it got what
    it waited for) on helper threads until it succeeds: True; or until *timeout* seconds
    (None: no limit) pass: False. Cancelled, it re-raises at once, and what a slice still in
    flight gets is given back with ``undo()``."""
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
        if part.got:
            return True
        if anyio.current_time() >= deadline:
            return False
