"""Memos: what the engine knows of one finished (query, key), and the words it uses for them.

A :class:`Memo` is the value or exception of one execution, the dependencies it read, the
revisions it was last verified and last changed in, and its durability. The job table keeps
one per (query, key); each thread keeps copies of those it read in its revision (see
``dualmode.query.hits``). See ``docs/architecture.md#the-query-protocol``.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar, overload

__all__ = [
    "COUNTED_REVISIONS",
    "HIGH",
    "LOW",
    "MEDIUM",
    "Durability",
    "ImmortalEnum",
    "Memo",
    "MemoState",
    "QKey",
    "ThreadId",
    "lookup",
]

QKey = tuple[str, tuple[Any, ...]]  # (query name, key arguments)
ThreadId = tuple[int, int]  # (pid, thread identifier): a thread that asks for queries
K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


# Durability levels as the engine keeps them, in memos and frames: small ints, which
# free-threaded builds make immortal, where an enum member's reference count would be written
# by every thread that reads it (see docs/architecture.md#the-hit-path).
LOW, MEDIUM, HIGH = 0, 1, 2

# Revisions whose verdicts are counted for ``db.stats().revisions`` (by the job table, and the
# greens by each thread): older ones are dropped, so that a database that lives through 10,000
# revisions keeps the memory it had after the first 100.
COUNTED_REVISIONS = 64


class Durability(enum.IntEnum):
    """How rarely an input changes (salsa's durability). A query's durability is the lowest of
    what it read; after a change to inputs of lower durability only, it is known to be
    unchanged without walking its dependencies. ``db.source[k] = v`` sets LOW."""

    LOW = LOW
    MEDIUM = MEDIUM
    HIGH = HIGH


class ImmortalEnum(type, enum.Enum):
    """An enum whose members are classes: the engine's answers (memo states, claims, verdicts).

    On free-threaded 3.13 every load of an object writes its reference count, and two threads
    writing one count take turns on its cache line: an ordinary enum member that every thread
    loads on every claim and publish made the 10,000-query DAG of
    ``benchmarks/bench_query.py`` about 8% slower on threads(2) (two threads loading one
    member: 0.98x the speed of one; loading a class: 1.74x). Classes are immortal there once a
    second thread runs, so these members cost nothing to share. Otherwise they are members of
    an Enum like any other (identity, ``name``, ``value``, iteration, pickling by name); each
    member's value is its name (``enum.auto()``).
    """

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> Any:
        return name

    def __new__(cls, value: str) -> ImmortalEnum:
        # Named as an attribute of its enum, so that pickle finds it by reference.
        namespace = {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.{value}"}
        member = type.__new__(cls, value, (), namespace)
        member._value_ = value
        return member

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}>"

    __str__ = enum.Enum.__str__
    __hash__ = object.__hash__  # members are singletons: their identity (Enum's is Python code)


class MemoState(ImmortalEnum):
    """What a :class:`Memo` holds.

    ``OK``: a value. ``ERROR``: the exception the body raised, memoized. ``FALLBACK``: the
    query lay on a cycle; its value is its ``cycle=`` fallback, computed by each reader (the
    job table runs no user code). ``ERROR_ONCE``: an exception delivered to the caller and the
    waiters but memoized nowhere (``cache_errors=False``, or a worker that died). ``RETRY``:
    the execution was abandoned (cancelled, interrupted); a waiter asks again. ``RERUN``: the
    query lies, without a fallback, on a cycle settled through other queries' fallbacks, and
    its owner waits (through the cycle) for the caller: the caller brings it up to date itself
    (its value: the older revision's memo the owner verifies, or None), unclaimed, and keeps
    the result nowhere (the owner publishes its own, equal one).
    """

    OK = enum.auto()
    ERROR = enum.auto()
    FALLBACK = enum.auto()
    ERROR_ONCE = enum.auto()
    RETRY = enum.auto()
    EVICTED = enum.auto()
    RERUN = enum.auto()


class Memo:
    """A finished query: its state and value (see :class:`MemoState`); the dependencies it
    read, in order (None: unknown, so it must execute again in a new revision); the revisions
    it was last verified and last changed in; and its durability (a :class:`Durability`
    value), the lowest of its dependencies' (HIGH when it read none)."""

    __slots__ = ("changed_at", "deps", "durability", "state", "value", "verified_at")

    def __init__(
        self,
        state: MemoState,
        value: Any,
        deps: tuple[QKey, ...] | None = (),
        verified_at: int = 0,
        changed_at: int = 0,
        durability: int = HIGH,
    ) -> None:
        self.state = state
        self.value = value
        self.deps = deps
        self.verified_at = verified_at
        self.changed_at = changed_at
        self.durability = durability

    def replace(self, **changes: Any) -> Memo:
        # Written out: a loop over the slots costs about three times as much, and re-stamps
        # and packing call this once per memo.
        get = changes.get
        return Memo(
            get("state", self.state),
            get("value", self.value),
            get("deps", self.deps),
            get("verified_at", self.verified_at),
            get("changed_at", self.changed_at),
            get("durability", self.durability),
        )

    def verified(self, revision: int) -> Memo:
        """This memo as verified in *revision* (``replace(verified_at=revision)``, at half its
        cost: re-validation re-stamps one per memo found green)."""
        return Memo(self.state, self.value, self.deps, revision, self.changed_at, self.durability)

    def evicted(self) -> Memo:
        """This memo without its value (see ``MemoState.EVICTED``)."""
        return Memo(
            MemoState.EVICTED, None, self.deps, self.verified_at, self.changed_at, self.durability
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return Memo, (
            self.state,
            self.value,
            self.deps,
            self.verified_at,
            self.changed_at,
            self.durability,
        )

    def __repr__(self) -> str:
        return (
            f"Memo({self.state.name}, {self.value!r}, verified_at={self.verified_at}, "
            f"changed_at={self.changed_at})"
        )


@overload
def lookup(table: dict[K, V], key: K) -> V | None: ...


@overload
def lookup(table: dict[K, V], key: K, default: D) -> V | D: ...


def lookup(table: dict[Any, Any], key: Any, default: Any = None) -> Any:
    """``table.get(key, default)`` for a dict that other threads write.

    On free-threaded 3.13, ``dict.get`` of a key object another live thread owns falls into the
    dict's slow locking path and parks for ~25 us (measured), where ``in`` and ``[]`` stay lock
    free. Only for dicts whose entries are replaced but not deleted, or deleted under a lock
    the caller holds.
    """
    return table[key] if key in table else default  # noqa: SIM401 - see above
