"""The query engine: memoized, single-flight, cycle-safe queries (rustc's query system, salsa).

::

    class Analyzer(dm.Database):
        source = dm.input()

        @dm.query
        def parse(self, path):
            return ast.parse(self.source[path])

    db = Analyzer()
    db.source["a.py"] = "x = 1"
    db.parse("a.py")            # computed once, memoized per (query, key)

Protocol (design section 5). The caller that asks for a missing key claims it in the job table,
runs the body inline, publishes the memo and opens the job's latch; a caller that finds the key
claimed waits on the latch. Before waiting it adds an edge to the wait-for graph and looks for a
cycle, so a cycle across threads is found at once, by whichever request closes it.

Cycles resolve by membership, not by which request closed them: if queries on the cycle have a
``cycle=`` fallback they take it and the others compute from it (they are not poisoned);
without any fallback every query on the cycle gets the same :class:`~dualmode.CycleError`,
whose ``.cycle`` lists the ``(query_name, key)`` entries in dependency order, rotated to start
at the smallest. Bodies already running finish (each executes at most once); a settled query's
own result is dropped for its settled one. One corner is still schedule-dependent: on a cycle
of three or more queries where only some have fallbacks, a fallback-less query whose request
closes the cycle on its own thread fails with CycleError (salsa answers this with fixpoint
iteration; not done here).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from .config import BackendSpec, _resolve_spec, current, resolve_backend
from .errors import CycleError

__all__ = ["BoundQuery", "Database", "QueryStats", "input", "query"]

T = TypeVar("T")
QKey = tuple[str, tuple[Any, ...]]  # (query name, key arguments)

_JOB_SHARDS = 64  # job-table locks: claims on different keys rarely meet


@dataclass(frozen=True)
class QueryStats:
    """Counters of one query over the life of a database (all times in seconds).

    ``hits``: answered from the memo table; ``misses``: not memoized when asked (the caller
    then executed it or waited for the thread that did); ``executions``: times the body ran;
    ``total_time``: wall time in the body, dependencies included; ``self_time``: the same less
    the time spent executing dependencies; ``wait_time``: time callers waited for another
    thread's execution.
    """

    hits: int = 0
    misses: int = 0
    executions: int = 0
    total_time: float = 0.0
    self_time: float = 0.0
    wait_time: float = 0.0


class _Memo:
    """A finished query: its value or exception, and the dependencies it read, in order."""

    __slots__ = ("deps", "ok", "value")

    def __init__(self, ok: bool, value: Any, deps: tuple[QKey, ...]) -> None:
        self.ok = ok
        self.value = value
        self.deps = deps

    def result(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


class _Frame:
    """A query being executed by a runner: what it has read so far."""

    __slots__ = ("child_time", "deps", "job")

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.deps: list[QKey] = []
        self.child_time = 0.0


class _Runner:
    """A thread that asks for queries: its stack of executing frames, the job it waits for,
    and its own counters per query (only this thread writes them: no atomics needed)."""

    __slots__ = (
        "executions",
        "hits",
        "memos",
        "misses",
        "self_time",
        "stack",
        "total",
        "wait",
        "waiting",
    )

    def __init__(self, n: int) -> None:
        # This thread's copy of the memos it has seen, per query. On free-threaded 3.13 a
        # lookup in a dict another thread created costs ~20 us once keys must be compared
        # (measured: 100x a local one), so hits are served from dicts this thread owns.
        self.memos: list[dict[tuple[Any, ...], _Memo]] = [{} for _ in range(n)]
        self.stack: list[_Frame] = []
        self.waiting: _Job | None = None
        self.hits = [0] * n
        self.misses = [0] * n
        self.executions = [0] * n
        self.total = [0.0] * n
        self.self_time = [0.0] * n
        self.wait = [0.0] * n


class _Job:
    """A claimed (query, key): who executes it, and the latch its waiters sleep on."""

    __slots__ = ("latch", "outcome", "owner", "qkey", "resolution")

    def __init__(self, qkey: QKey, owner: _Runner) -> None:
        self.qkey = qkey
        self.owner = owner
        self.latch = threading.Event()
        self.resolution: _Memo | None = None  # set when a cycle through this job was resolved
        self.outcome: _Memo | None = None  # what waiters get, set before the latch opens


def _sort_key(entry: QKey) -> tuple[str, str, str]:
    name, key = entry
    return name, type(key).__name__, repr(key)


def _canonical(cycle: list[QKey]) -> list[tuple[str, Any]]:
    """The cycle rotated to start at its smallest entry: the same text on every backend."""
    start = min(range(len(cycle)), key=lambda i: _sort_key(cycle[i]))
    rotated = cycle[start:] + cycle[:start]
    return [(name, key[0] if len(key) == 1 else key) for name, key in rotated]


class _Runtime:
    """The job table, wait-for graph, memo tables and counters of one database."""

    def __init__(self, db: Database, queries: list[_QueryDescriptor[Any]]) -> None:
        self.db = db
        self.queries = {q.name: q for q in queries}
        self.index = {q.name: i for i, q in enumerate(queries)}
        self.memos: dict[str, dict[tuple[Any, ...], _Memo]] = {q.name: {} for q in queries}
        self.jobs: dict[QKey, _Job] = {}
        self.job_locks = [threading.Lock() for _ in range(_JOB_SHARDS)]
        self.graph_lock = threading.Lock()  # taken only by a caller about to wait
        self.local = threading.local()
        self.runners: list[_Runner] = []
        self.runners_lock = threading.Lock()

    def runner(self) -> _Runner:
        try:
            runner: _Runner = self.local.runner
        except AttributeError:
            runner = _Runner(len(self.queries))
            self.local.runner = runner
            with self.runners_lock:
                self.runners.append(runner)
        return runner

    # -- the miss path ---------------------------------------------------------------------

    def get(self, qkey: QKey, runner: _Runner) -> Any:
        name, key = qkey
        memos = self.memos[name]
        index = self.index[name]
        lock = self.job_locks[hash(qkey) % _JOB_SHARDS]
        with lock:
            memo = memos.get(key)
            job = mine = None
            if memo is None:
                job = self.jobs.get(qkey)
                if job is None:
                    job = mine = self.jobs[qkey] = _Job(qkey, runner)
        if job is None:  # published while we took the lock
            runner.hits[index] += 1
            assert memo is not None
            return memo.result()
        runner.misses[index] += 1
        if mine is not None:
            return self._execute(job, runner, index).result()
        return self._wait(job, runner, index).result()

    def _execute(self, job: _Job, runner: _Runner, index: int) -> _Memo:
        name, key = job.qkey
        descriptor = self.queries[name]
        frame = _Frame(job)
        runner.stack.append(frame)
        start = time.perf_counter()
        try:
            value = descriptor.fn(self.db, *key)
            memo = _Memo(True, value, tuple(frame.deps))
        except Exception as exc:
            memo = _Memo(False, exc, tuple(frame.deps))
        finally:
            elapsed = time.perf_counter() - start
            runner.stack.pop()
            runner.executions[index] += 1
            runner.total[index] += elapsed
            runner.self_time[index] += elapsed - frame.child_time
            if runner.stack:
                runner.stack[-1].child_time += elapsed
        return self._publish(job, memo, descriptor)

    def _publish(self, job: _Job, memo: _Memo, descriptor: _QueryDescriptor[Any]) -> _Memo:
        name, key = job.qkey
        lock = self.job_locks[hash(job.qkey) % _JOB_SHARDS]
        with lock:
            if job.resolution is not None:  # a cycle was resolved through it: that result wins
                memo = job.resolution
            elif memo.ok or descriptor.cache_errors:
                self.memos[name][key] = memo
            job.outcome = memo  # waiters get it even when it is not memoized
            del self.jobs[job.qkey]
        job.latch.set()
        return memo

    def _wait(self, job: _Job, runner: _Runner, index: int) -> _Memo:
        with self.graph_lock:
            if job.resolution is None:
                cycle = self._find_cycle(job, runner)
                if cycle is not None:
                    self._resolve(cycle)
                if job.resolution is None:
                    if job.owner is runner:
                        # A fallback-less query of my own stack, on a cycle resolved through a
                        # fallback: waiting for it would wait for myself. Unwind to it.
                        assert cycle is not None
                        return _Memo(False, CycleError(_canonical([j.qkey for j in cycle])), ())
                    runner.waiting = job  # its chain reaches a resolved job: it will finish
        start = time.perf_counter()
        job.latch.wait()
        runner.wait[index] += time.perf_counter() - start
        with self.graph_lock:
            runner.waiting = None
        assert job.outcome is not None  # set before the latch opened
        return job.outcome

    def _find_cycle(self, job: _Job, me: _Runner) -> list[_Job] | None:
        """The jobs on the cycle that waiting for *job* would close, or None (graph_lock held).

        Follows owner -> the job that owner waits for -> its owner... back to *me*. The cycle is
        my frames from the job that the chain reaches, then each owner's frames from the job
        waited for up to its newest, in dependency order.
        """
        segments: list[list[_Job]] = []
        current = job
        seen: set[int] = set()
        while True:
            if current.resolution is not None:
                return None  # resolved: waiting for it ends at once
            owner = current.owner
            if owner is not me and owner.waiting is None:
                return None  # it is running, so the chain ends: no cycle
            # My stack is mine; a waiting owner's is still while graph_lock is held.
            frames = [f.job for f in owner.stack]
            if current not in frames:
                return None  # its owner has not started it yet, or just finished it
            position = frames.index(current)
            if owner is me:
                return frames[position:] + [j for seg in segments for j in seg]
            segments.append(frames[position:])
            if id(owner) in seen:
                return None
            seen.add(id(owner))
            assert owner.waiting is not None
            current = owner.waiting

    def _resolve(self, cycle: list[_Job]) -> None:
        """Settle a cycle now (graph_lock held), the same way whichever request closed it.

        If some queries on it have a ``cycle=`` fallback, those take their fallback values and
        the others are not poisoned: they go on and compute from them. Without any fallback,
        every query on the cycle gets the same CycleError. Settled jobs' waiters wake now; the
        bodies still running finish, and their own results are dropped for these.
        """
        error = CycleError(_canonical([job.qkey for job in cycle]))
        fallbacks = [job for job in cycle if self.queries[job.qkey[0]].cycle is not None]
        for job in fallbacks or cycle:
            name, key = job.qkey
            fallback = self.queries[name].cycle
            if fallback is None:
                memo = _Memo(False, error, ())
            else:
                try:
                    memo = _Memo(True, fallback(self.db, *key), ())
                except Exception as exc:
                    memo = _Memo(False, exc, ())
            with self.job_locks[hash(job.qkey) % _JOB_SHARDS]:
                job.resolution = job.outcome = memo
                self.memos[name][key] = memo
            job.latch.set()

    def stats(self) -> dict[str, QueryStats]:
        with self.runners_lock:
            runners = list(self.runners)
        result = {}
        for name, i in self.index.items():
            result[name] = QueryStats(
                hits=sum(r.hits[i] for r in runners),
                misses=sum(r.misses[i] for r in runners),
                executions=sum(r.executions[i] for r in runners),
                total_time=sum(r.total[i] for r in runners),
                self_time=sum(r.self_time[i] for r in runners),
                wait_time=sum(r.wait[i] for r in runners),
            )
        return result


class BoundQuery(Generic[T]):
    """A query of one database: call it with a key (``db.parse("a.py")``)."""

    __slots__ = ("_descriptor", "_index", "_local", "_memos", "_name", "_rt")

    def __init__(self, rt: _Runtime, descriptor: _QueryDescriptor[T]) -> None:
        self._rt = rt
        self._descriptor = descriptor
        self._name = descriptor.name
        self._memos = rt.memos[descriptor.name]
        self._index = rt.index[descriptor.name]
        self._local = rt.local

    def __call__(self, *key: Any) -> T:
        # The hit path: one thread-local read, one read of a dict this thread owns, one counter
        # of its own; no lock, nothing another thread writes.
        try:
            runner: _Runner = self._local.runner
        except AttributeError:
            runner = self._rt.runner()
        stack = runner.stack
        if stack:  # record the edge for the caller, hit or miss
            stack[-1].deps.append((self._name, key))
        index = self._index
        mine = runner.memos[index]
        try:
            memo = mine.get(key)
        except TypeError:
            raise _unhashable(self._name, key) from None
        if memo is None:
            memo = self._memos.get(key)
            if memo is None:
                return self._rt.get((self._name, key), runner)  # type: ignore[no-any-return]
            mine[key] = memo
        runner.hits[index] += 1
        if memo.ok:
            return memo.value  # type: ignore[no-any-return]
        raise memo.value

    def peek(self, *key: Any, default: Any = None) -> Any:
        """The memoized value without computing anything: *default* if not computed yet;
        the memoized exception is raised if the query failed."""
        memo = self._memos.get(key)
        return default if memo is None else memo.result()

    def prefetch(self, keys: Iterable[Any]) -> None:
        """Compute every missing key in parallel on the database's backend (a key that is a
        tuple is passed as several arguments). Failures stay memoized; nothing is raised."""
        missing = [k if isinstance(k, tuple) else (k,) for k in keys]
        missing = [k for k in missing if k not in self._memos]
        if missing:
            from .parallel import par_for_each

            par_for_each(self._prefetch_one, missing, backend=self._rt.db.backend)

    def _prefetch_one(self, key: tuple[Any, ...]) -> None:
        with contextlib.suppress(Exception):  # memoized: the caller sees it when it asks
            self(*key)

    def __repr__(self) -> str:
        return f"<query {self._name} of {self._rt.db!r}>"


def _unhashable(name: str, key: tuple[Any, ...]) -> TypeError:
    for position, arg in enumerate(key):
        try:
            hash(arg)
        except TypeError:
            return TypeError(
                f"query {name!r}: argument {position} ({type(arg).__name__}) is unhashable, so "
                "it cannot be a memo key; pass a hashable value (a tuple, frozenset, str...)"
            )
    return TypeError(f"query {name!r}: its key {key!r} is unhashable")


class _QueryDescriptor(Generic[T]):
    """``@dm.query`` on a Database method: the method, its options, and access as BoundQuery."""

    def __init__(
        self,
        fn: Callable[..., T],
        *,
        cycle: Callable[..., T] | None = None,
        cache_errors: bool = True,
    ) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.cycle = cycle
        self.cache_errors = cache_errors
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, db: None, owner: type) -> _QueryDescriptor[T]: ...

    @overload
    def __get__(self, db: Database, owner: type) -> BoundQuery[T]: ...

    def __get__(self, db: Database | None, owner: type) -> Any:
        if db is None:
            return self
        bound = BoundQuery(db._runtime, self)
        db.__dict__[self.name] = bound  # later lookups skip the descriptor
        return bound


@overload
def query(fn: Callable[..., T], /) -> _QueryDescriptor[T]: ...


@overload
def query(
    *, cycle: Callable[..., Any] | None = None, cache_errors: bool = True
) -> Callable[[Callable[..., T]], _QueryDescriptor[T]]: ...


def query(
    fn: Callable[..., T] | None = None,
    /,
    *,
    cycle: Callable[..., Any] | None = None,
    cache_errors: bool = True,
) -> Any:
    """Make a Database method a memoized, single-flight, cycle-checked query.

    ``@dm.query`` or ``@dm.query(cycle=fn, cache_errors=True)``. *cycle* is called as
    ``fn(db, *key)`` for the value this query takes when it lies on a dependency cycle (without
    it, the cycle raises CycleError). With ``cache_errors=False`` an exception is delivered to
    the caller and every waiter but not memoized: the next call executes the body again.
    """

    def decorate(f: Callable[..., T]) -> _QueryDescriptor[T]:
        if not callable(f):
            raise TypeError(f"@dm.query decorates a method, got {f!r}")
        return _QueryDescriptor(f, cycle=cycle, cache_errors=cache_errors)

    return decorate if fn is None else decorate(fn)


class _InputMap:
    """``db.source[key]``: values set from outside; reading one records a dependency."""

    __slots__ = ("_name", "_rt", "_values")

    def __init__(self, rt: _Runtime, name: str) -> None:
        self._rt = rt
        self._name = name
        self._values: dict[Hashable, Any] = {}

    def __getitem__(self, key: Hashable) -> Any:
        runner = self._rt.runner()
        if runner.stack:
            runner.stack[-1].deps.append((self._name, (key,)))
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(
                f"input {self._name!r} has no value for {key!r}; set it first "
                f"(db.{self._name}[{key!r}] = ...)"
            ) from None

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if self._rt.runner().stack:
            raise RuntimeError(
                f"input {self._name!r} set from inside a running query; inputs change only "
                "between queries, from outside"
            )
        self._values[key] = value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values


class input:
    """Declare an input of a Database: ``source = dm.input()``; then ``db.source[k] = v``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, db: Database | None, owner: type) -> Any:
        if db is None:
            return self
        inputs = _InputMap(db._runtime, self.name)
        db.__dict__[self.name] = inputs
        return inputs


class Database:
    """Base class of query databases: declare ``@dm.query`` methods and ``dm.input()``s.

    ``Analyzer(backend="threads", workers=2)`` fixes the backend that ``prefetch`` runs on
    (default: the one in force when the database is created). Every query is memoized per key
    and executes at most once, however many threads ask.
    """

    _query_descriptors: list[_QueryDescriptor[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._query_descriptors = [
            v
            for klass in reversed(cls.__mro__)
            for v in vars(klass).values()
            if isinstance(v, _QueryDescriptor)
        ]

    def __init__(self, *, backend: BackendSpec | None = None, workers: int | None = None) -> None:
        if workers is None:
            self.backend = resolve_backend(backend)
        else:  # a backend by name with this many workers (the current one's name by default)
            self.backend = _resolve_spec(
                backend if backend is not None else current().name, workers
            )
        self._runtime = _Runtime(self, type(self)._query_descriptors)

    def stats(self) -> dict[str, QueryStats]:
        """Per query: hits, misses, executions, total and self time, time spent waiting."""
        return self._runtime.stats()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self.backend.name}>"
