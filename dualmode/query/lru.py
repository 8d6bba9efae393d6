"""``@dm.query(lru=N)``: at most N values of a query kept from one revision to the next.

As in salsa, values are dropped when a new revision starts (``InProcessJobTable.set_input``
calls :func:`evict`), never during one: a value computed in a revision stays for the rest
of it, so each (query, key) still executes at most once per revision. An evicted memo keeps
its dependencies and revisions (``Memo.evicted``): a later claim verifies it as usual, then
executes the body for the value; if nothing it read changed, the result keeps its old
``changed_at`` (``dualmode.query.backdate``), so what depends on it stays green. See
``docs/queries.md#bounded-memory-lru``.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from .memo import Memo, MemoState

__all__ = ["Recency", "check_lru", "evict"]

K = TypeVar("K", bound=Hashable)
_HELD = (MemoState.OK, MemoState.ERROR)  # the states whose memo holds a value to drop


def check_lru(name: str, lru: object, local: bool) -> int | None:
    """*lru* as ``@dm.query`` takes it: None (keep every value) or a positive int. Raises
    TypeError or ValueError that say what to pass."""
    if lru is None:
        return None
    if isinstance(lru, bool) or not isinstance(lru, int):
        raise TypeError(
            f"query {name!r}: lru must be a positive int (the most values to keep) or None "
            f"(keep them all), not {type(lru).__name__} {lru!r}"
        )
    if lru < 1:
        raise ValueError(
            f"query {name!r}: lru must be at least 1 (the most values to keep), not {lru}; "
            "pass lru=None to keep every value"
        )
    if local:
        raise ValueError(
            f"query {name!r}: lru= and local=True cannot be combined: a local=True value "
            "lives only in the process that computed it, so it cannot be dropped and "
            "recomputed elsewhere; drop one of the two options"
        )
    return lru


def evict(
    memos: dict[Any, Memo],
    limit: int,
    lock: Callable[[Hashable], threading.Lock],
    revision: int,
) -> int:
    """Drop the values of *memos* (one query's, in a job table) beyond *limit*, those
    verified longest ago first, as *revision* starts; each memo replaced under ``lock(key)``,
    the lock of its shard. A memo verified in *revision* meanwhile (claims run while this
    does) is kept: a caller may already hold its value. Returns how many were dropped."""
    held = [(memo.verified_at, key) for key, memo in list(memos.items()) if memo.state in _HELD]
    excess = len(held) - limit
    if excess <= 0:
        return 0
    dropped = 0
    for _, key in heapq.nsmallest(excess, held, key=lambda entry: entry[0]):
        with lock(key):
            memo = memos[key]
            if memo.state in _HELD and memo.verified_at < revision:
                memos[key] = memo.evicted()
                dropped += 1
    return dropped


class Recency(Generic[K]):
    """The keys a process keeps values of, least recently used first, at most *limit*: for
    a cache in front of a job table (the processes backend's clients), where a dropped value
    is fetched again. Any thread may call :meth:`use`."""

    __slots__ = ("_lock", "_order", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._order: OrderedDict[K, None] = OrderedDict()
        self._lock = threading.Lock()

    def use(self, key: K) -> list[K]:
        """Record a use of *key*; the keys now beyond the limit, to drop (oldest first)."""
        with self._lock:
            order = self._order
            if key in order:
                order.move_to_end(key)
                return []
            order[key] = None
            victims = []
            while len(order) > self.limit:
                victims.append(order.popitem(last=False)[0])
            return victims
