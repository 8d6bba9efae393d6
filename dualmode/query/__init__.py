"""The query engine: memoized, single-flight, cycle-safe, incremental queries (rustc, salsa).

The public API is :class:`Database`, :func:`query`, :class:`input` and the types they give
(:class:`BoundQuery`, :class:`Durability`, the stats types); the user's guide is
``docs/queries.md``. The modules, and the protocol they implement
(``docs/architecture.md#the-query-protocol``):

- ``database``: ``Database`` and the ``@query`` declarations; ``inputs``: ``dm.input()``;
  ``shipping``: how a database travels to other processes.
- ``hits``: the hit path (bound queries and each thread's caches), with its free-threading
  invariants; measured by ``benchmarks/bench_query.py``.
- ``runtime``: the miss path of one database in one process: fetch, then ``verify``,
  ``execute`` and ``backdate``, each a module of its own; ``awaiting``: the miss path from
  async code; ``tasks``: a task's state and the driver of an async body's steps.
- ``job_table``: the :class:`~dualmode.query.job_table.JobTable` protocol (claims, latches,
  the wait-for graph, memos, inputs, revisions) and its in-process implementation;
  ``memo``: the memos and their states.
- ``stats``: what ``db.stats()`` returns.
"""

from __future__ import annotations

from .database import Database, query
from .hits import BoundQuery
from .inputs import input
from .memo import Durability
from .stats import DatabaseStats, QueryStats, RevisionStats

__all__ = [
    "BoundQuery",
    "Database",
    "DatabaseStats",
    "Durability",
    "QueryStats",
    "RevisionStats",
    "input",
    "query",
]
