"""The exceptions dualmode raises; every one is importable from :mod:`dualmode`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BorrowError",
    "BrokenBarrierError",
    "Cancelled",
    "ConfigError",
    "CycleError",
    "ParallelError",
    "QueueEmpty",
    "QueueFull",
    "QueueShutDown",
    "WorkerCrashed",
    "WrongThreadError",
]


class BorrowError(RuntimeError):
    """An operation would block forever, or breaks a borrow rule, so it raises instead.

    The serial backend raises it where a parallel backend would wait for another thread that
    cannot exist: re-acquiring a held :class:`~dualmode.Lock`, writing an
    :class:`~dualmode.RwLock` while a read guard lives, acquiring a
    :class:`~dualmode.Semaphore` at zero, waiting with no timeout on an
    :class:`~dualmode.Event` nobody can set. Every backend raises it for writing a frozen
    :class:`~dualmode.FreezeLock` and for a :class:`~dualmode.OnceCell` initialiser that asks
    for its own cell. This is rustc's ``RefCell`` panic: a bug report, never a hang.
    """


class WrongThreadError(RuntimeError):
    """A serial-backend primitive was used from a thread other than the one that created it.

    Serial primitives carry no real lock, so sharing one between threads would be a data race.
    Create the primitive under a parallel backend (``dm.use("threads")`` or
    ``backend="threads"``) to share it between threads.
    """


class ConfigError(ValueError):
    """The requested backend or worker count is not usable; the message says what to choose."""


class CycleError(RuntimeError):
    """A query needs itself, through some chain of queries, on one thread or across several.

    ``.cycle`` lists the ``(query_name, key)`` entries of the cycle in dependency order (each
    needs the next; the last needs the first), rotated to start at its smallest entry, so the
    same cycle gives the same error on every backend and every run, whichever thread closed
    it. Give a query ``@dm.query(cycle=fn)`` to take ``fn(db, *key)`` instead.
    """

    def __init__(self, cycle: Sequence[tuple[str, Any]]) -> None:
        self.cycle = list(cycle)
        chain = " -> ".join(f"{name}({key!r})" for name, key in [*self.cycle, self.cycle[0]])
        super().__init__(f"query cycle: {chain}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.cycle,)


class Cancelled(BaseException):
    """A query was cancelled: an input changed while it ran (salsa's ``Cancelled``).

    Raised inside the queries of the older revision at their next read of a query or input,
    and out of the call that started them. Nothing they computed is kept; ask again to get
    the value for the new inputs. A ``BaseException``, like ``asyncio.CancelledError``, so
    that a query body's ``except Exception`` does not swallow it.
    """


class WorkerCrashed(RuntimeError):
    """A worker process, or the coordinator that hosts primitives, died during this call."""


class ParallelError(ExceptionGroup[Exception]):
    """Every failure of one parallel call (``par_map``, ``join``, ``scope``, ``broadcast``).

    A parallel call runs every item, then raises this once, on every backend (serial too):
    ``.exceptions`` holds the failures in item (or spawn) order and ``.indices`` the position
    of each failed item. Catch it with ``except ParallelError`` or ``except*`` by type.
    """

    indices: list[int]

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], indices: Sequence[int] | None = None
    ) -> ParallelError:
        self = super().__new__(cls, message, exceptions)
        self.indices = list(range(len(exceptions)) if indices is None else indices)
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ParallelError:  # type: ignore[override]
        return ParallelError(self.message, excs)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, list(self.exceptions), self.indices)


BrokenBarrierError = threading.BrokenBarrierError
QueueEmpty = queue.Empty
QueueFull = queue.Full


class _QueueShutDown(Exception):
    """Raised by ``put`` after ``shutdown()``, and by ``get`` once a shut-down queue is empty."""


# Python 3.13 added queue.ShutDown; use it there so `except queue.ShutDown` keeps working.
QueueShutDown: type[Exception] = getattr(queue, "ShutDown", _QueueShutDown)
