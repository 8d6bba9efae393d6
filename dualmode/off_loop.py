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
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar, cast

__all__ = [
    "NOT_YET",
    "SLICE",
    "async_timeout",
    "get_off_loop",
    "retake_shielded",
    "wait_aside",
    "wait_off_loop",
]

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


async def retake_shielded(retake: Callable[[], Awaitable[object]]) -> None:
    """Await ``retake()`` (a Condition taking its lock back after a wait) to the end, even in a
    cancelled task, as asyncio's and trio's Conditions do; a cancellation that came meanwhile
    goes on afterwards. Shielded from cancel scopes; ``asyncio.Task.cancel`` passes a shield,
    so a ``retake()`` it interrupts (having taken nothing) is started again."""
    import anyio

    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await retake()
                break
            except anyio.get_cancelled_exc_class() as exc:
                cancelled = exc
    if cancelled is not None:
        raise cancelled


async def wait_aside(
    begin: Callable[[], object],
    wait: Callable[[], T],
    cancel: Callable[[], object],
    undo: Callable[[T], object],
) -> T:
    """Run ``begin()`` then ``wait()`` (blocking calls) on a helper thread of its own (none of
    anyio's shared ones, so any number of tasks may wait): ``wait()``'s result.

    Cancelled, the task calls ``cancel()`` (which must make ``wait()`` return soon) once
    ``begin()`` has returned, and not before (the helper calls it itself if the cancellation
    came between), then waits, shielded, for the helper to end before the cancellation goes
    on; if the helper had not started, it never will. What ``wait()`` returned all the same
    (it ended as the cancellation came) is given back with ``undo(result)``. A Condition's
    wait on processes: ``begin`` queues it in the coordinator, ``cancel`` ends it there,
    ``undo`` passes a notification it got on."""
    import anyio
    import anyio.to_thread

    from .parking_lot import wait_done

    finished: Future[None] = Future()
    guard = threading.Lock()
    started = begun = gone = False
    got: Any = NOT_YET

    def body() -> T:
        nonlocal started, begun, got
        with guard:
            if gone:  # cancelled before this thread got to it; nobody awaits this any more
                raise RuntimeError("the waiting task was cancelled")
            started = True
        try:
            begin()
            with guard:
                begun, left = True, gone
            if left:
                cancel()
            result = wait()
            with guard:
                got, left = result, gone
            if left:
                undo(result)
            return result
        finally:
            finished.set_result(None)

    try:
        return await anyio.to_thread.run_sync(
            body, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
        )
    except BaseException as exc:
        if isinstance(exc, Exception):
            raise
        with guard:
            gone = True
            ending, waiting, result = begun and got is NOT_YET, started, got
        if result is not NOT_YET:
            undo(result)
        elif ending:
            cancel()
        if waiting:
            with anyio.CancelScope(shield=True):
                await wait_done([finished])
        raise
