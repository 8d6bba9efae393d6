"""The exceptions dualmode raises; every one is importable from :mod:`dualmode`."""

from __future__ import annotations

import queue
import reprlib
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BorrowError",
    "BrokenBarrierError",
    "Cancelled",
    "ConfigError",
    "CycleError",
    "DeadlockError",
    "ParallelError",
    "QueueEmpty",
    "QueueFull",
    "QueueShutDown",
    "RemoteError",
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
    """A serial-backend primitive or Database was used from a thread other than its creator's.

    Serial primitives and serial databases carry no real lock, so sharing one between threads
    would be a data race. Create it under a parallel backend (``dm.use("threads")`` or
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


class DeadlockError(RuntimeError):
    """The deadlock watchdog found this caller blocked for good, and woke it with this error.

    Raised only by a backend started with ``watchdog=SECONDS`` (``dm.configure``, ``dm.use``,
    ``DUALMODE_WATCHDOG``), in every blocked caller of a wait-for cycle (each waits, with no
    timeout, for a primitive held by the next), or in every blocked caller when all the
    threads of the process have waited longer than the limit. The message, and
    :attr:`waits` line by line, name each thread (or process) in it, what it waits for (a
    primitive by kind and the ``file:line`` that created it) and who holds that. Nothing was
    acquired by the call that raised: release what the thread holds (a ``with`` block does)
    and take locks in one global order, or wait with a timeout. See docs/guarantees.md.
    """

    def __init__(self, message: str, waits: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.waits = list(waits)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message, self.waits)


class Cancelled(BaseException):
    """A query was cancelled: an input changed while it ran (salsa's ``Cancelled``).

    Raised inside the queries of the older revision at their next read of a query or input,
    and out of the call that started them. Nothing they computed is kept; ask again to get
    the value for the new inputs. A ``BaseException``, like ``asyncio.CancelledError``, so
    that a query body's ``except Exception`` does not swallow it.
    """


class WorkerCrashed(RuntimeError):
    """A worker process, or the coordinator that hosts primitives, died during this call."""


class RemoteError(Exception):
    """An exception raised in a worker process that cannot travel back as itself: it does
    not pickle (it holds a lock, a socket...), or it does not unpickle (its ``__init__`` takes
    other arguments than its ``args``). It keeps what can travel: :attr:`type_name` (module
    and qualified name), :attr:`message` (``str()`` of it) and :attr:`remote_traceback`, the
    worker's traceback as text (also in a note, as every failure from a worker has). The
    threads and serial backends raise the original: make the exception picklable, with
    ``args`` that rebuild it, to get the same on processes.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(
            f"{type_name}: {message} (raised in a worker process; it could not be "
            "sent back as itself)"
        )
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return RemoteError, (self.type_name, self.message, self.remote_traceback), self.__dict__


class ParallelError(ExceptionGroup[Exception]):
    """Every failure of one parallel call (``par_map``, ``join``, ``scope``, ``broadcast``).

    A parallel call runs every item, then raises this once, on every backend (serial too):
    ``.exceptions`` holds the failures in item (or spawn) order and ``.indices`` the position
    of each failed item: its index in the items of ``par_map``, 0 (``fa``) or 1 (``fb``) for
    ``join``, the worker for ``broadcast``, the spawn order for ``scope`` (where the block's
    own exception, if it raised one, comes first with index -1).

    Catch it with ``except ParallelError`` or by type with ``except*``: the part that
    ``except* ValueError`` (or :meth:`split`, :meth:`subgroup`) hands out is a ParallelError
    too, and keeps the index of each exception it holds, through nested groups and pickling.
    """

    indices: list[int]

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], indices: Sequence[int] | None = None
    ) -> ParallelError:
        self = super().__new__(cls, message, exceptions)
        self.indices = list(range(len(exceptions)) if indices is None else indices)
        if len(self.indices) != len(self.exceptions):
            raise ValueError(
                f"ParallelError needs one index per exception: got {len(self.indices)} indices "
                f"for {len(self.exceptions)} exceptions"
            )
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ParallelError:  # type: ignore[override]
        """This group's message and indices, over *excs*: a part of ``self.exceptions``.

        ``split`` and ``subgroup`` (so ``except*``) call it with the exceptions they keep, in
        their order here; each is one of ``self.exceptions`` or, for a nested group that
        matched in part, a group derived from one of them, recognised by a leaf exception
        it shares with that one (leaves are never copied, only groups are re-derived).
        """
        indices: list[int] = []
        originals = zip(self.exceptions, self.indices, strict=True)
        for exc in excs:
            leaf = _first_leaf(exc)
            for original, index in originals:
                if original is exc or (leaf is not exc and _holds(original, leaf)):
                    indices.append(index)
                    break
            else:
                raise ValueError(
                    f"ParallelError.derive() takes exceptions of this group, in its order; "
                    f"{exc!r} is not one of them (or is out of order): to group other "
                    "exceptions, build ParallelError(message, exceptions, indices)"
                )
        return ParallelError(self.message, excs, indices)

    def __reduce__(self) -> tuple[Any, ...]:
        # The instance dict carries __notes__ (a worker's traceback, for one) along.
        return type(self), (self.message, list(self.exceptions), self.indices), self.__dict__


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _holds(group: BaseException, leaf: BaseException) -> bool:
    """Whether *leaf* is one of the exceptions at the bottom of *group* (by identity)."""
    if not isinstance(group, BaseExceptionGroup):
        return group is leaf
    return any(_holds(exc, leaf) for exc in group.exceptions)


BrokenBarrierError = threading.BrokenBarrierError
QueueEmpty = queue.Empty
QueueFull = queue.Full


class _QueueShutDown(Exception):
    """Raised by ``put`` after ``shutdown()``, and by ``get`` once a shut-down queue is empty."""


# Named as it is exported: tracebacks show dualmode.errors.QueueShutDown, and pickle finds
# the class under that name.
_QueueShutDown.__name__ = _QueueShutDown.__qualname__ = "QueueShutDown"

# Python 3.13 added queue.ShutDown; use it there so `except queue.ShutDown` keeps working.
QueueShutDown: type[Exception] = getattr(queue, "ShutDown", _QueueShutDown)


def check_callable(call: str, argument: str, fn: object, items: object = None) -> None:
    """TypeError now, naming *call*'s *argument*, where *fn* is not callable: rather than
    one per item from the workers, or one from deep inside a primitive. *items*: the other
    argument, when a caller may have swapped the two."""
    if callable(fn):
        return
    swapped = " (the function comes first)" if callable(items) else ""
    raise TypeError(
        f"{call}() argument {argument!r} must be callable{swapped}, "
        f"got {type(fn).__name__}: {reprlib.repr(fn)}"
    )


def broken_barrier() -> BrokenBarrierError:
    """The BrokenBarrierError that a broken Barrier's ``wait`` raises, saying what breaks one
    and what to do (``threading.Barrier`` says nothing)."""
    return BrokenBarrierError(
        "the Barrier is broken: a wait timed out, the action raised, or abort() was called; "
        "every waiter gets this error, and reset() makes the barrier usable again"
    )


def queue_shut_down(operation: str) -> Exception:
    """The :data:`QueueShutDown` that a Queue's *operation* (``"put"`` or ``"get"``) raises
    once ``shutdown()`` was called, saying so and what to do (``queue.Queue`` says nothing)."""
    if operation == "put":
        return QueueShutDown(
            "put() on a Queue that was shut down: it takes no more items; stop producing, "
            "or put into a new Queue"
        )
    return QueueShutDown(
        "get() on a Queue that was shut down and is empty: every item was taken; stop "
        "consuming (catch dm.QueueShutDown to end a consumer's loop)"
    )
