"""What ``db.stats()`` returns: counters per query, and how each revision was brought up to date."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatabaseStats", "QueryStats", "RevisionStats"]


@dataclass(frozen=True)
class QueryStats:
    """Counters of one query over the life of a database (all times in seconds).

    ``hits``: answered from the memo table; ``misses``: not memoized when asked (the caller
    then executed it or waited for the thread that did); ``executions``: times the body ran;
    ``total_time``: wall time in the body, dependencies included; ``self_time``: the same less
    the time spent executing dependencies; ``wait_time``: time callers waited for another
    thread's execution. On processes, every worker's counts are included (hits served from a
    worker's own cache reach the coordinator with that worker's next request). ``values``:
    how many keys' values (or memoized exceptions) the database's table holds now (on
    processes, the table in the process that created the database); with ``lru=N``, at most
    N when an input has just changed, plus those computed since (see
    ``docs/queries.md#bounded-memory-lru``).
    """

    hits: int = 0
    misses: int = 0
    executions: int = 0
    total_time: float = 0.0
    self_time: float = 0.0
    wait_time: float = 0.0
    values: int = 0


@dataclass(frozen=True)
class RevisionStats:
    """How the (query, key) pairs asked for in one revision were brought up to date.

    ``green``: re-validated without running the body (no dependency changed); ``executed``:
    the body ran (new keys, or a dependency changed); ``backdated``: of those, how many gave a
    value equal to the old one, so that what depends on them stayed green.
    """

    green: int = 0
    executed: int = 0
    backdated: int = 0


class DatabaseStats(dict[str, QueryStats]):
    """``db.stats()``: a :class:`QueryStats` per query name, plus ``.revisions``, a
    :class:`RevisionStats` per revision in which anything was re-validated or executed, and
    ``.revision``, the current revision."""

    def __init__(
        self, queries: dict[str, QueryStats], revisions: dict[int, RevisionStats], revision: int
    ) -> None:
        super().__init__(queries)
        self.revisions = revisions
        self.revision = revision
