"""dualmode: one API for synchronization, parallel iteration and queries, on any backend.

Choose the backend by configuration (``serial``, ``threads``, ``processes``, or a third party's);
the same program gives the same results on each. See ``dm.use``, ``dm.configure`` and the
primitives in :mod:`dualmode.primitives`.
"""

from __future__ import annotations

from .backend import Backend
from .config import available_backends, configure, current, use
from .errors import (
    BorrowError,
    BrokenBarrierError,
    Cancelled,
    ConfigError,
    CycleError,
    ParallelError,
    QueueEmpty,
    QueueFull,
    QueueShutDown,
    WorkerCrashed,
    WrongThreadError,
)
from .parallel import (
    Scope,
    TaskHandle,
    async_join,
    async_par_for_each,
    async_par_map,
    broadcast,
    join,
    par_for_each,
    par_map,
    run_in_worker,
    scope,
)
from .primitives import (
    AtomicInt,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    FreezeLock,
    Lock,
    Mutex,
    MutexGuard,
    OnceCell,
    Queue,
    RLock,
    RwLock,
    Semaphore,
    ShardedDict,
    WorkerLocal,
    WriteGuard,
)
from .query import (
    BoundQuery,
    Database,
    DatabaseStats,
    Durability,
    QueryStats,
    RevisionStats,
    input,
    query,
)

__version__ = "0.1.0"

__all__ = [
    "AtomicInt",
    "Backend",
    "BoundQuery",
    "Barrier",
    "BorrowError",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "ConfigError",
    "Cancelled",
    "CycleError",
    "Database",
    "DatabaseStats",
    "Durability",
    "ParallelError",
    "Event",
    "FreezeLock",
    "Lock",
    "Mutex",
    "MutexGuard",
    "OnceCell",
    "Queue",
    "QueryStats",
    "QueueEmpty",
    "QueueFull",
    "QueueShutDown",
    "RLock",
    "RevisionStats",
    "RwLock",
    "Scope",
    "Semaphore",
    "ShardedDict",
    "TaskHandle",
    "WorkerCrashed",
    "WorkerLocal",
    "WriteGuard",
    "WrongThreadError",
    "async_join",
    "async_par_for_each",
    "async_par_map",
    "available_backends",
    "broadcast",
    "configure",
    "current",
    "input",
    "join",
    "par_for_each",
    "par_map",
    "query",
    "run_in_worker",
    "scope",
    "use",
]
