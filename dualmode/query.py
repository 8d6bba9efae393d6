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

import enum
import functools
import operator
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .config import BackendSpec, _resolve_spec, current, resolve_backend
from .errors import Cancelled
from .job_table import (
    BACKDATED,
    ERROR,
    ERROR_ONCE,
    EXECUTED,
    FALLBACK,
    GREEN,
    HIGH,
    LOW,
    MEDIUM,
    MEMO,
    OK,
    RETRY,
    STALE,
    JobTable,
    Memo,
    QKey,
    lookup,
)

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

T = TypeVar("T")


@dataclass(frozen=True)
class QueryStats:
    """Counters of one query over the life of a database (all times in seconds).

    ``hits``: answered from the memo table; ``misses``: not memoized when asked (the caller
    then executed it or waited for the runner that did); ``executions``: times the body ran;
    ``total_time``: wall time in the body, dependencies included; ``self_time``: the same less
    the time spent executing dependencies; ``wait_time``: time callers waited for another
    runner's execution. On processes, every worker's counts are included (hits served from a
    worker's own cache reach the coordinator with that worker's next request).
    """

    hits: int = 0
    misses: int = 0
    executions: int = 0
    total_time: float = 0.0
    self_time: float = 0.0
    wait_time: float = 0.0


class Durability(enum.IntEnum):
    """How rarely an input changes (salsa's durability). A query's durability is the lowest of
    what it read; after a change to inputs of lower durability only, it is known to be
    unchanged without walking its dependencies. ``db.source[k] = v`` sets LOW."""

    LOW = LOW
    MEDIUM = MEDIUM
    HIGH = HIGH


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


class _Frame:
    """A query being executed (or verified) by a runner: what it has read so far, and the
    lowest durability among the inputs it read."""

    __slots__ = ("child_time", "deps", "durability")

    def __init__(self) -> None:
        self.deps: list[QKey] = []
        self.child_time = 0.0
        self.durability = HIGH


class _NoArg:
    """No argument given (None is a valid key). A class, not an ``object()``: on free-threaded
    builds classes become immortal, so the hit path compares with it without writing a
    reference count that every thread shares."""


_NO_ARG: Any = _NoArg


class _Miss(Exception):
    """Raised through a runner's cache when it does not hold the argument: the caller then
    runs the miss path outside the cache (lru_cache holds a lock while its function runs on
    free-threaded builds, and a query's miss path may re-enter the same cache)."""


def _primer(runner: _Runner, rt: _Runtime, name: str, index: int) -> Callable[[Any], Any]:
    """The function a runner's cache of one query wraps, called when the cache lacks an
    argument: the value the miss path put in ``runner.prime``, else a value this process
    already has (the common case: no exception), else :class:`_Miss`."""

    def prime(arg: Any) -> Any:
        value = runner.prime
        if value is not _NO_ARG:
            runner.prime = _NO_ARG
            return value
        memo = rt.shared_hit(name, (arg,), runner, index)
        if memo is None or memo.state != OK:
            raise _Miss
        return memo.value

    return prime


def _recorder(stack: list[_Frame], name: str, cache: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A runner's cache of query *name* as seen while a body runs: records the edge first."""

    # One (name, (arg,)) per argument, shared by every edge to it: fewer objects for the
    # collector, which on free-threaded builds stops every thread while it runs.
    qkeys: dict[Any, QKey] = {}

    def record(arg: Any) -> Any:
        if arg in qkeys:  # in and [], not .get: see dualmode.job_table.lookup
            qkey = qkeys[arg]
        else:
            qkey = qkeys[arg] = (name, (arg,))
        stack[-1].deps.append(qkey)
        return cache(arg)

    return record


class _Runner:
    """A thread that asks for queries: the revision its queries run in, its stack of executing
    frames, its own copy of the memos it has read in that revision, and its hits not yet
    counted by the table (only this thread writes them).

    One-argument calls, the common case, hit ``caches``: per query a ``functools.lru_cache`` of
    this thread's, by bare argument, holding plain values, that counts its hits in C (no key
    tuple, no Python counter). ``calls`` is what the hit path calls: ``caches``, or while a body
    runs ``recording``, which records the dependency edge first. Errors are not cached there.
    ``bound`` holds this thread's bound queries; :meth:`switch` points each at its entry of
    ``calls``.
    """

    __slots__ = (
        "bound",
        "caches",
        "calls",
        "greens",
        "hits",
        "ident",
        "memos",
        "names",
        "past_greens",
        "prime",
        "recording",
        "revision",
        "rt",
        "stack",
    )

    def __init__(self, rt: _Runtime, names: list[str], revision: int) -> None:
        n = len(names)
        self.rt = rt
        self.ident = (os.getpid(), threading.get_ident())
        self.names = names
        # Dicts this thread owns: see dualmode.job_table.lookup for why hits avoid shared ones.
        self.memos: list[dict[tuple[Any, ...], Memo]] = [{} for _ in range(n)]
        self.revision = revision
        self.stack: list[_Frame] = []
        self.hits = [0] * n  # besides those the caches count
        self.prime: Any = _NO_ARG
        self.caches: list[Any] = []
        self.recording: list[Callable[[Any], Any]] = []
        self.calls: list[Callable[[Any], Any]] = []
        self.bound: list[_Binding[Any]] = []
        self._new_caches()
        # Memos it found green without a claim: in this revision, and in earlier ones.
        self.greens = 0
        self.past_greens: dict[int, int] = {}

    def _new_caches(self) -> None:
        for i, cache in enumerate(self.caches):
            self.hits[i] += cache.cache_info().hits
        self.caches = [
            functools.lru_cache(maxsize=None)(_primer(self, self.rt, name, i))
            for i, name in enumerate(self.names)
        ]
        self.recording = [
            _recorder(self.stack, n, c) for n, c in zip(self.names, self.caches, strict=False)
        ]
        self.calls = self.recording if self.stack else self.caches

    def switch(self) -> None:
        """Point this thread's bound queries at ``calls`` (only this thread calls it)."""
        calls = self.calls
        for bound in self.bound:
            bound._call = calls[bound._index]

    def all_hits(self) -> list[int]:
        return [n + c.cache_info().hits for n, c in zip(self.hits, self.caches, strict=False)]

    def advance(self, revision: int) -> None:
        """Move to a newer revision: the memos copied in the old one may be out of date."""
        if self.greens:
            self.past_greens[self.revision] = self.greens
            self.greens = 0
        self.revision = revision
        self.memos = [{} for _ in self.memos]
        self._new_caches()


class _Runtime:
    """The client side of one database's job table: executes and verifies bodies, records
    dependencies, caches memos in this process, and turns memos into values or exceptions."""

    def __init__(
        self,
        db: Database,
        queries: list[_QueryDescriptor[Any]],
        inputs: frozenset[str],
        table: Any,
        revision: int = 1,
    ) -> None:
        self.db = db
        self.table: JobTable = table
        self.remote: bool = table.remote  # values cross processes packed, via the coordinator
        self.queries = {q.name: q for q in queries}
        self.index = {q.name: i for i, q in enumerate(queries)}
        self.inputs = inputs
        # The memos readers may use without asking the table: the table's own in-process; on
        # processes, this process's cache of what it has executed or received.
        self.memos: dict[str, dict[tuple[Any, ...], Memo]] = (
            {q.name: {} for q in queries} if self.remote else table.memos
        )
        self.scope = os.getpid() if self.remote else None  # where local=True memos live
        self.revision = revision  # the newest revision this process knows of
        self.revision_lock = threading.Lock()
        self.threads = threading.local()  # .runner: this thread's runner
        self.reported: dict[int, list[int]] = {}  # processes: hits sent, per id(runner)
        self.runners: list[_Runner] = []  # kept after their threads end: stats count their hits
        self.runners_lock = threading.Lock()

    def runner(self) -> _Runner:
        """This thread's runner, in the current revision unless a body of an older one runs."""
        try:
            runner: _Runner = self.threads.runner
        except AttributeError:
            runner = _Runner(self, list(self.queries), self.revision)
            self.threads.runner = runner
            with self.runners_lock:
                self.runners.append(runner)
        self._install(runner)
        return runner

    def _install(self, runner: _Runner) -> None:
        """Point this thread's bound queries at *runner*'s calls, in the current revision
        unless a body runs. Checked again after the stores: a new revision may have reset
        them (see learn_revision) between the check and the stores, and the old revision's
        calls left in the new one would serve stale values until the next revision."""
        while True:
            if not runner.stack and runner.revision != self.revision:
                runner.advance(self.revision)
            runner.switch()
            if runner.stack or runner.revision == self.revision:
                return

    def bind(self, descriptor: _QueryDescriptor[T]) -> BoundQuery[T]:
        """A new bound query of this database for the calling thread."""
        runner = self.runner()
        binding: _Binding[T] = _Binding(self, descriptor.name, self.index[descriptor.name], runner)
        runner.bound.append(binding)
        self._install(runner)
        return BoundQuery(_hit, binding._thread, binding)

    def learn_revision(self, revision: int) -> None:
        """Move this process to *revision*: every thread's next hit takes the slow path (its
        bound queries are reset after the revision is published; see _install)."""
        with self.revision_lock:
            if revision <= self.revision:
                return
            self.revision = revision
        with self.runners_lock:
            runners = list(self.runners)
        for runner in runners:
            for bound in list(runner.bound):
                bound._call = None

    def enter(self, runner: _Runner, frame: _Frame) -> None:
        """Push a frame; with the first, calls record their dependency edges."""
        runner.stack.append(frame)
        if len(runner.stack) == 1:
            runner.calls = runner.recording
            runner.switch()

    def leave(self, runner: _Runner) -> None:
        runner.stack.pop()
        if not runner.stack:
            runner.calls = runner.caches
            self._install(runner)

    def stale(self, runner: _Runner, revision: int) -> None:
        """The table says *runner*'s revision is over: cancel its queries, or, between
        queries, move it to the current revision."""
        self.learn_revision(revision)
        if runner.stack:
            raise Cancelled(
                f"an input of {self.db!r} changed (revision {runner.revision} -> {revision}) "
                "while this query ran; ask again for the value from the new inputs"
            )
        self._install(runner)

    # -- the miss path ---------------------------------------------------------------------

    def get(self, name: str, key: tuple[Any, ...], runner: _Runner) -> Any:
        """``name(*key)`` when this runner's own copy of the memos lacks it."""
        memo = self.memo_of(name, key, runner, mine=False)
        if memo.state == OK:
            return memo.value
        raise memo.value

    def memo_of(self, name: str, key: tuple[Any, ...], runner: _Runner, mine: bool = True) -> Memo:
        """The memo of ``name(*key)`` in *runner*'s revision: found, verified, or executed
        (*mine*: look in the runner's own copy first)."""
        index = self.index[name]
        memos = runner.memos[index]
        if mine:
            memo = memos.get(key)
            if memo is not None:
                return memo
        while True:
            memo = self.shared_hit(name, key, runner, index)
            if memo is not None:
                return memo
            descriptor = self.queries[name]
            scope = self.scope if descriptor.local else None
            pending = self._pending_hits(runner) if self.remote else ()
            kind, answer = self.table.claim(
                name, key, runner.ident, runner.revision, scope, *pending
            )
            if kind == MEMO:
                memo = self._received(descriptor, key, answer)
                break
            if kind == STALE:
                self.stale(runner, answer)
                memos = runner.memos[index]  # a new revision: a new copy
                continue
            old = None if answer is None else self._received(descriptor, key, answer, old=True)
            memo = self._update(descriptor, key, runner, scope, old)
            break
        if memo.state == FALLBACK:
            memo = self._fallback(self.queries[name], key, memo)
        if memo.state != ERROR_ONCE:
            memos[key] = memo
        return memo

    def shared_hit(
        self, name: str, key: tuple[Any, ...], runner: _Runner, index: int
    ) -> Memo | None:
        """The memo of ``name(*key)`` from this process's memos if it is valid in the runner's
        revision (copied into the runner's own), else None. No lock, no claim."""
        memos = self.memos[name]
        if key not in memos:  # in and [], not .get: see dualmode.job_table.lookup
            return None
        memo = memos[key]
        revision = runner.revision
        if memo.state == FALLBACK:
            return None
        if memo.verified_at != revision:
            if self.remote or not self.table.unchanged((name, key), memo, revision):
                return None
            runner.greens += 1  # green: nothing it read changed since it was verified
        runner.hits[index] += 1
        runner.memos[index][key] = memo
        return memo

    def _pending_hits(self, runner: _Runner) -> tuple[list[tuple[str, int]], ...]:
        """This runner's hits the table has not counted yet (processes only), to send along."""
        totals = runner.all_hits()
        with self.runners_lock:
            sent = self.reported.get(id(runner)) or [0] * len(totals)
            self.reported[id(runner)] = totals
        pending = [
            (runner.names[i], n - m)
            for i, (n, m) in enumerate(zip(totals, sent, strict=False))
            if n > m
        ]
        return (pending,) if pending else ()

    def _update(
        self,
        descriptor: _QueryDescriptor[Any],
        key: tuple[Any, ...],
        runner: _Runner,
        scope: Any,
        old: Memo | None,
    ) -> Memo:
        """Bring a claimed (query, key) up to date in the runner's revision and publish it:
        verify *old* (green if none of its dependencies changed since it was verified), else
        execute the body, and backdate the result if it equals *old*'s."""
        name = descriptor.name
        revision = runner.revision
        frame = _Frame()
        self.enter(runner, frame)
        start = time.perf_counter()
        try:
            if old is not None and not descriptor.volatile and not self._changed(old, runner):
                self.leave(runner)
                memo = old.replace(verified_at=revision)
                if self.remote and scope is None:
                    self.memos[name][key] = memo
                override = self.table.publish(
                    name, key, runner.ident, self._green(memo), verdict=GREEN, scope=scope
                )
                return memo if override is None else self._received(descriptor, key, override)
            frame.deps.clear()  # what verification read is not the body's
            frame.durability = HIGH
            try:
                value = descriptor.fn(self.db, *key)
                state = OK
            except Exception as exc:
                value, state = exc, ERROR
        except BaseException:
            self.leave(runner)
            self.table.abandon(name, key, runner.ident, scope)
            raise
        elapsed = time.perf_counter() - start
        self.leave(runner)
        if runner.stack:
            runner.stack[-1].child_time += elapsed
        durability = LOW if descriptor.volatile else self._durability(frame, runner)
        memo = Memo(state, value, tuple(frame.deps), revision, revision, durability)
        verdict = EXECUTED
        if old is not None and _same_result(old, memo):
            memo.changed_at = old.changed_at
            verdict = BACKDATED
        store = memo.state == OK or descriptor.cache_errors
        if not store:
            memo = memo.replace(state=ERROR_ONCE)
        elif scope is not None:
            # local=True: the value stays in this process and the table keeps only a marker;
            # threads of this process that waited for it read it from here.
            self.memos[name][key] = memo
        shipped = memo
        if self.remote:
            shipped, failed = self.table.pack(memo, keep_value=scope is None)
            if failed:  # the value cannot travel: this caller gets the same error as the others
                memo = self.table.unpack(shipped)
        override = self.table.publish(
            name,
            key,
            runner.ident,
            shipped,
            store=store,
            verdict=verdict,
            elapsed=elapsed,
            self_time=elapsed - frame.child_time,
            scope=scope,
        )
        if override is not None:  # a cycle through this query was settled meanwhile
            memo = self._received(descriptor, key, override)
        elif self.remote and store:
            self.memos[name][key] = memo
        return memo

    def _green(self, memo: Memo) -> Memo:
        """What to publish for a memo verified green: on processes, without its value (the
        coordinator re-stamps the one it has)."""
        return memo.replace(value=None) if self.remote else memo

    def _changed(self, old: Memo, runner: _Runner) -> bool:
        """Whether a dependency of *old* changed after it was verified: inputs and queries in
        the order they were read; each query is brought up to date first (it may execute)."""
        if old.deps is None:
            return True  # unknown (settled on a cycle before its body finished)
        since = old.verified_at
        inputs: list[tuple[str, Any]] = []
        for name, key in old.deps:
            if name in self.inputs:
                inputs.append((name, key[0]))
                continue
            if inputs:
                if self._inputs_changed(inputs, since, runner):
                    return True
                inputs = []
            # A key of this thread's own: it is stored in this runner's dicts (see lookup()).
            if self.memo_of(name, (*key,), runner).changed_at > since:
                return True
        return bool(inputs) and self._inputs_changed(inputs, since, runner)

    def _inputs_changed(self, inputs: list[tuple[str, Any]], since: int, runner: _Runner) -> bool:
        kind, answer = self.table.input_changes(inputs, since, runner.revision)
        if kind == STALE:
            self.stale(runner, answer)  # raises Cancelled: a frame is on the stack
        return bool(answer)

    def _durability(self, frame: _Frame, runner: _Runner) -> int:
        """The lowest durability among what the frame read (inputs counted as they were read)."""
        durability = frame.durability
        for name, key in frame.deps:
            if durability == LOW:
                break
            if name in self.inputs:
                continue
            memo = lookup(runner.memos[self.index[name]], key)
            durability = LOW if memo is None else min(durability, memo.durability)
        return durability

    def _received(
        self, descriptor: _QueryDescriptor[Any], key: tuple[Any, ...], memo: Memo, old: bool = False
    ) -> Memo:
        """A memo from the table, as this process uses it (unpacked and cached here)."""
        if not self.remote:
            return memo
        name = descriptor.name
        if descriptor.local and memo.state == OK:
            # A marker: the value is in this process, put there by the thread that executed it.
            mine = lookup(self.memos[name], key)
            if mine is None:  # cannot happen: published only after it was cached here
                if old:
                    return memo.replace(state=RETRY, deps=None)  # execute it again
                raise RuntimeError(f"query {name}{key!r}: its local=True value is lost")
            return mine.replace(verified_at=memo.verified_at, changed_at=memo.changed_at)
        memo = self.table.unpack(memo)
        if memo.state != ERROR_ONCE and not old:
            self.memos[name][key] = memo
        return memo

    def _fallback(
        self, descriptor: _QueryDescriptor[Any], key: tuple[Any, ...], memo: Memo
    ) -> Memo:
        """The value of a query settled by its ``cycle=`` fallback (computed by each reader)."""
        assert descriptor.cycle is not None
        try:
            return memo.replace(state=OK, value=descriptor.cycle(self.db, *key))
        except Exception as exc:
            return memo.replace(state=ERROR, value=exc)

    def peek(self, name: str, key: tuple[Any, ...]) -> Memo | None:
        descriptor = self.queries[name]
        revision = self.revision
        memo = lookup(self.memos[name], key)
        if memo is not None and memo.verified_at != revision:
            valid = not self.remote and self.table.unchanged((name, key), memo, revision)
            memo = memo if valid else None
        if memo is None and self.remote and not descriptor.local:
            memo = self.table.peek(name, key, revision)
            if memo is not None:
                memo = self._received(descriptor, key, memo)
        if memo is not None and memo.state == FALLBACK:
            memo = self._fallback(descriptor, key, memo)
        return memo

    def stats(self) -> DatabaseStats:
        with self.runners_lock:
            runners = list(self.runners)
        if self.remote:  # this process's uncounted hits reach the table first
            for runner in runners:
                pending = self._pending_hits(runner)
                if pending:
                    self.table.add_hits(*pending)
        counts, verdicts = self.table.stats()
        queries = {}
        for name, i in self.index.items():
            hits, misses, executions, total, self_time, wait = counts[name]
            if not self.remote:
                hits += sum(r.all_hits()[i] for r in runners)
            queries[name] = QueryStats(hits, misses, executions, total, self_time, wait)
        for runner in runners:
            greens = runner.past_greens.copy()
            greens[runner.revision] = greens.get(runner.revision, 0) + runner.greens
            for r, n in greens.items():
                if n:
                    verdicts.setdefault(r, {GREEN: 0, EXECUTED: 0, BACKDATED: 0})[GREEN] += n
        revisions = {
            r: RevisionStats(v[GREEN], v[EXECUTED] + v[BACKDATED], v[BACKDATED])
            for r, v in sorted(verdicts.items())
        }
        return DatabaseStats(queries, revisions, self.revision)


def _same_result(old: Memo, new: Memo) -> bool:
    """Whether a re-executed query gave what it gave before (then it is backdated)."""
    if old.state != new.state:
        return False
    if new.state == OK:
        try:
            return bool(old.value == new.value)
        except Exception:  # an __eq__ that raises, or an ambiguous truth value (arrays)
            return False
    a, b = old.value, new.value
    return type(a) is type(b) and getattr(a, "args", None) == getattr(b, "args", None)


class _Binding(Generic[T]):
    """What one thread's bound query of one database works with: the thread, its runner, and
    the entry of the runner's ``calls`` for the query (see :func:`_hit`)."""

    __slots__ = ("_call", "_index", "_name", "_rt", "_runner", "_thread")

    def __init__(self, rt: _Runtime, name: str, index: int, runner: _Runner) -> None:
        self._rt = rt
        self._name = name
        self._index = index
        self._runner = runner
        self._thread: int | None = get_ident()  # None once that thread has ended
        # runner.calls[index] (see _Runner.switch), or None after a new revision began.
        self._call: Callable[[Any], Any] | None = None

    def other_call(self, arg: Any, more: tuple[Any, ...]) -> T:
        """A call from a thread other than the one this was bound in (passed on to that
        thread's own), or with no argument or several."""
        if self._thread != get_ident():
            mine: BoundQuery[T] = getattr(self._rt.db, self._name)
            return mine() if arg is _NO_ARG else mine(arg, *more)
        return self._call_key(() if arg is _NO_ARG else (arg, *more))

    def miss(self, arg: Any) -> T:
        runner = self._rt.runner()
        memo = self._rt.memo_of(self._name, (arg,), runner)
        if memo.state != OK:
            raise memo.value  # errors stay out of the cache: each call raises it anew
        runner.prime = memo.value
        runner.caches[self._index](arg)  # the cache stores the primed value...
        runner.prime = _NO_ARG  # ...unless a nested call of the same key already had
        return memo.value  # type: ignore[no-any-return]

    def _call_key(self, key: tuple[Any, ...]) -> T:
        """A call with no argument or several: keyed by their tuple, in the runner's memos."""
        runner = self._rt.runner()
        if runner.stack:
            runner.stack[-1].deps.append((self._name, key))
        try:
            memo = runner.memos[self._index].get(key)
        except TypeError:
            raise _unhashable(self._name, key) from None
        if memo is None:
            return self._rt.get(self._name, key, runner)  # type: ignore[no-any-return]
        runner.hits[self._index] += 1
        if memo.state == OK:
            return memo.value  # type: ignore[no-any-return]
        raise memo.value

    def peek(self, key: tuple[Any, ...], default: Any) -> Any:
        memo = self._rt.peek(self._name, key)
        if memo is None or memo.state == ERROR_ONCE:
            return default
        if memo.state == OK:
            return memo.value
        raise memo.value

    def prefetch(self, keys: Iterable[Any]) -> None:
        # Which keys are missing is for the workers to find: checked here, it would be work
        # that the caller does alone while they wait.
        wanted = [k if isinstance(k, tuple) else (k,) for k in keys]
        if wanted:
            from .parallel import par_for_each

            backend = self._rt.db.backend
            chunks = backend.workers * _PREFETCH_CHUNKS_PER_WORKER
            chunksize = -(-len(wanted) // chunks)
            one = functools.partial(_prefetch_one, self._rt.db, self._name)
            par_for_each(one, wanted, chunksize=chunksize, backend=backend)


def _prefetch_one(db: Database, name: str, key: tuple[Any, ...]) -> None:
    rt = db._runtime
    while True:
        try:
            # Straight to the memo (no value: failures stay memoized for whoever asks).
            rt.memo_of(name, key, rt.runner())
        except Cancelled:  # an input changed meanwhile: bring it up to date in the new one
            continue
        return


def _hit(
    thread: int,
    binding: _Binding[T],
    arg: Any = _NO_ARG,
    /,
    *more: Any,
    _get_ident: Any = get_ident,
    _no_arg: Any = _NO_ARG,
) -> T:
    """A call of a bound query bound in *thread*. The hit path of a one-argument call is one
    call of this thread's own C-level cache (see _Runner): no key tuple, no lock, nothing
    shared written. (*thread* is an argument and the keyword defaults are locals because on
    3.13t, whose interpreter does not specialize, an attribute or a global costs a lookup on
    every call.)"""
    if thread != _get_ident() or more or arg is _no_arg:
        return binding.other_call(arg, more)
    try:
        return binding._call(arg)  # type: ignore[misc,no-any-return]
    except _Miss:
        return binding.miss(arg)
    except TypeError:
        if binding._call is None:  # a new revision, or the thread that bound it has ended
            if binding._thread != _get_ident():  # ended: this one only shares its identifier
                return binding.other_call(arg, more)
            binding._rt.runner()  # move this thread on, then ask again
            return _hit(thread, binding, arg)
        try:
            hash(arg)
        except TypeError:
            raise _unhashable(binding._name, (arg,)) from None
        raise


class BoundQuery(functools.partial[T]):
    """A query of one database: call it with a key (``db.parse("a.py")``).

    ``db.parse`` gives each thread a bound query of its own (the same object every time in
    that thread). On free-threaded builds every call writes the reference count of the object
    called, and two threads writing one object's count take turns on its cache line; so a
    thread that keeps ``parse = db.parse`` for a hot loop shares nothing with other threads
    on a hit. A bound query handed to another thread still works there: it passes the call
    on to that thread's own, at the cost of an attribute lookup.

    (A ``functools.partial`` of :func:`_hit`, because CPython calls a partial without the
    generic ``__call__`` lookup that a class of its own would cost on every hit.)
    """

    __slots__ = ()

    @property
    def _binding(self) -> _Binding[T]:
        return self.args[1]  # type: ignore[no-any-return]

    async def async_get(self, *key: Any) -> T:
        """``self(*key)`` from async code, under asyncio or trio (through anyio).

        A memo that is still valid is returned (or its exception raised) at once; otherwise
        the query runs in a worker thread (``anyio.to_thread.run_sync``), so the event loop
        never blocks on a body or on another caller's execution. Cancelling the await
        abandons the wait, not the computation: the body finishes and is memoized.
        """
        binding = self._binding
        memo = binding._rt.peek(binding._name, key)
        if memo is not None and memo.state in (OK, ERROR):
            if memo.state == OK:
                return memo.value  # type: ignore[no-any-return]
            raise memo.value
        import anyio.to_thread  # imported on first use: sync-only programs never pay for it

        call = functools.partial(self, *key)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    def peek(self, *key: Any, default: Any = None) -> Any:
        """The memoized value without computing anything: *default* if it was never computed,
        or something it read changed since; the memoized exception is raised if the query
        failed."""
        return self._binding.peek(key, default)

    def prefetch(self, keys: Iterable[Any]) -> None:
        """Compute every missing key in parallel on the database's backend (a key that is a
        tuple is passed as several arguments). Failures stay memoized; nothing is raised."""
        self._binding.prefetch(keys)

    def __reduce__(self) -> tuple[Any, ...]:
        binding = self._binding
        return getattr, (binding._rt.db, binding._name)  # the shipped database's same query

    def __repr__(self) -> str:
        binding = self._binding
        return f"<query {binding._name} of {binding._rt.db!r}>"


# Chunks per worker for prefetch: more than par_map's default, because how long a key takes
# varies more (its dependencies may be done already, or a long chain), and a chunk left for
# one worker at the end idles the others. Chosen with benchmarks/bench_query.py.
_PREFETCH_CHUNKS_PER_WORKER = 16


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


class _QueryDescriptor(property, Generic[T]):
    """``@dm.query`` on a Database method: the method, its options, and access as BoundQuery.

    A property whose getter is C code (``operator.attrgetter``): ``db.parse`` reads this
    thread's bound query from the database's :class:`_ThreadQueries` without running Python.
    """

    def __init__(
        self,
        fn: Callable[..., T],
        *,
        cycle: Callable[..., T] | None = None,
        cache_errors: bool = True,
        local: bool = False,
        volatile: bool = False,
    ) -> None:
        self.fn = fn
        self.cycle = cycle
        self.cache_errors = cache_errors
        self.local = local
        self.volatile = volatile
        self._named(fn.__name__)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _named(self, name: str) -> None:
        self.name = name
        super().__init__(operator.attrgetter(f"{_THREAD_QUERIES}.{name}"), doc=self.fn.__doc__)

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.name:
            self._named(name)

    if TYPE_CHECKING:

        @overload
        def __get__(self, db: None, owner: type | None = None, /) -> _QueryDescriptor[T]: ...

        @overload
        def __get__(self, db: Database, owner: type | None = None, /) -> BoundQuery[T]: ...

        def __get__(self, db: Database | None, owner: type | None = None, /) -> Any: ...


# The attribute of a Database that holds its _ThreadQueries.
_THREAD_QUERIES = "_dualmode_thread_queries"


class _ThreadQueries(threading.local):
    """One database's bound queries, one set per thread: made on a thread's first access to
    each query (by a :class:`_Binder` of the database's class), then found in this thread's
    own attributes. When the thread ends they are retired (see :class:`_ThreadEnd`), so a
    later thread that reuses its identifier cannot mistake them for its own."""

    def __init__(self, rt: _Runtime) -> None:
        self.runtime = rt
        self.end = _ThreadEnd()


class _Binder:
    """A class attribute of a database class's _ThreadQueries subclass, per query: found
    only while this thread has no bound query of that name yet; makes and keeps one."""

    def __init__(self, descriptor: _QueryDescriptor[Any]) -> None:
        self.descriptor = descriptor

    def __get__(self, queries: _ThreadQueries | None, owner: type) -> Any:
        if queries is None:
            return self
        bound = queries.runtime.bind(self.descriptor)
        queries.end.bound.append(bound._binding)
        setattr(queries, self.descriptor.name, bound)
        return bound


class _ThreadEnd:
    """Dropped with a thread's _ThreadQueries attributes when the thread ends."""

    def __init__(self) -> None:
        self.bound: list[_Binding[Any]] = []

    def __del__(self) -> None:
        for bound in self.bound:
            bound._thread = None  # calls from anywhere now go to the caller's own...
            bound._call = None  # ...even from a thread that reuses this one's identifier


@overload
def query(fn: Callable[..., T], /) -> _QueryDescriptor[T]: ...


@overload
def query(
    *,
    cycle: Callable[..., Any] | None = None,
    cache_errors: bool = True,
    local: bool = False,
    volatile: bool = False,
) -> Callable[[Callable[..., T]], _QueryDescriptor[T]]: ...


def query(
    fn: Callable[..., T] | None = None,
    /,
    *,
    cycle: Callable[..., Any] | None = None,
    cache_errors: bool = True,
    local: bool = False,
    volatile: bool = False,
) -> Any:
    """Make a Database method a memoized, single-flight, cycle-checked query.

    ``@dm.query`` or ``@dm.query(cycle=fn, cache_errors=True, local=False, volatile=False)``.
    *cycle* is
    called as ``fn(db, *key)`` for the value this query takes when it lies on a dependency
    cycle (without it, the cycle raises CycleError). With ``cache_errors=False`` an exception
    is delivered to the caller and every waiter but not memoized: the next call executes the
    body again. With ``local=True`` (for values that are expensive to pickle, such as an AST)
    the processes backend keeps each value in the process that computed it: another worker
    process that needs it executes the body again there, at most once per process. On serial
    and threads it changes nothing. A ``volatile=True`` query (rustc's ``eval_always``, for
    bodies that read something outside the database) executes again in every new revision
    in which it is asked for; if its value is unchanged, what depends on it stays green.
    """

    def decorate(f: Callable[..., T]) -> _QueryDescriptor[T]:
        if not callable(f):
            raise TypeError(f"@dm.query decorates a method, got {f!r}")
        return _QueryDescriptor(
            f, cycle=cycle, cache_errors=cache_errors, local=local, volatile=volatile
        )

    return decorate if fn is None else decorate(fn)


class _InputMap:
    """``db.source[key]``: values set from outside; reading one records a dependency.

    The values live in the database's job table (on processes, in the coordinator), so every
    worker reads the same ones. Setting one starts a new revision.
    """

    __slots__ = ("_name", "_rt")

    def __init__(self, rt: _Runtime, name: str) -> None:
        self._rt = rt
        self._name = name

    def __getitem__(self, key: Hashable) -> Any:
        rt = self._rt
        runner = rt.runner()
        frame = runner.stack[-1] if runner.stack else None
        if frame is not None:
            frame.deps.append((self._name, (key,)))
        while True:
            status, value, changed_at, durability = rt.table.get_input(
                self._name, key, runner.revision
            )
            if status != STALE:
                break
            rt.stale(runner, changed_at)  # in a query: raises Cancelled
        if frame is not None and durability < frame.durability:
            frame.durability = durability
        if status != MEMO:
            raise KeyError(
                f"input {self._name!r} has no value for {key!r}; set it first "
                f"(db.{self._name}[{key!r}] = ...)"
            )
        return rt.table.unpack_value(value)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    def set(self, key: Hashable, value: Any, *, durability: Durability = Durability.LOW) -> None:
        """Set the input at *key*: a new revision starts. *durability*: how rarely this
        input changes (see :class:`Durability`)."""
        rt = self._rt
        if rt.runner().stack:
            raise RuntimeError(
                f"input {self._name!r} set from inside a running query; inputs change only "
                "between queries, from outside"
            )
        if rt.remote and rt.db._home != os.getpid():
            raise RuntimeError(
                f"input {self._name!r} set in process {os.getpid()}: the inputs of a database on "
                f"the processes backend are set in the process that created it "
                f"({rt.db._home}), which hands the new revision to the tasks it sends"
            )
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"input {self._name!r}: the key {key!r} is unhashable; use a hashable key "
                "(a str, tuple, frozenset...)"
            ) from None
        if not isinstance(durability, int) or not LOW <= durability <= HIGH:
            raise ValueError(
                f"durability must be a dualmode.Durability (LOW, MEDIUM or HIGH), not "
                f"{durability!r}"
            )
        packed = rt.table.pack_value(value)
        rt.learn_revision(rt.table.set_input(self._name, key, packed, int(durability)))

    def __contains__(self, key: Hashable) -> bool:
        runner = self._rt.runner()
        status = self._rt.table.get_input(self._name, key, runner.revision)[0]
        if status == STALE:
            status = self._rt.table.get_input(self._name, key, self._rt.revision)[0]
        return bool(status == MEMO)

    def __repr__(self) -> str:
        return f"<input {self._name} of {self._rt.db!r}>"


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


# The databases this process has (made here, or received from another process), by token: a
# database shipped to a worker again and again is rebuilt there once, with one memo cache.
_attached: weakref.WeakValueDictionary[str, Database] = weakref.WeakValueDictionary()
_attached_lock = threading.Lock()


class Database:
    """Base class of query databases: declare ``@dm.query`` methods and ``dm.input()``s.

    ``Analyzer(backend="threads", workers=2)`` fixes the backend that the memos live on and
    that ``prefetch`` runs on (default: the one in force when the database is created). Every
    query is memoized per key and executes at most once per revision, however many threads or
    processes ask. Setting an input starts a new revision: what depends on it is re-validated
    when next asked for, and only the queries whose dependencies changed execute again.

    On the processes backend the job table, memos and inputs live in the backend's coordinator
    and the database is shipped to workers (its class by reference, or by value with
    cloudpickle, and its own attributes by pickle): a class that cannot be shipped raises
    TypeError here, when the database is created. Its inputs are set in the creating process.
    """

    _query_descriptors: list[_QueryDescriptor[Any]]
    _thread_queries: type[_ThreadQueries]
    _input_names: frozenset[str]
    _runtime: _Runtime
    _token: str
    _home: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        attributes = {k: v for klass in reversed(cls.__mro__) for k, v in vars(klass).items()}
        cls._query_descriptors = [v for v in attributes.values() if isinstance(v, _QueryDescriptor)]
        cls._input_names = frozenset(k for k, v in attributes.items() if isinstance(v, input))
        binders = {q.name: _Binder(q) for q in cls._query_descriptors}
        cls._thread_queries = type(f"{cls.__name__}ThreadQueries", (_ThreadQueries,), binders)

    def __init__(self, *, backend: BackendSpec | None = None, workers: int | None = None) -> None:
        if workers is None:
            self.backend = resolve_backend(backend)
        else:  # a backend by name with this many workers (the current one's name by default)
            self.backend = _resolve_spec(
                backend if backend is not None else current().name, workers
            )
        cls = type(self)
        descriptors = cls._query_descriptors
        table = self.backend.create_job_table(
            {q.name: q.cycle is not None for q in descriptors},
            frozenset(q.name for q in descriptors if q.volatile),
        )
        if table.remote:
            _check_shippable(cls, self.backend.name)
        self._runtime = _Runtime(self, descriptors, cls._input_names, table)
        setattr(self, _THREAD_QUERIES, cls._thread_queries(self._runtime))
        self._token = uuid.uuid4().hex
        self._home = os.getpid()
        with _attached_lock:
            _attached[self._token] = self

    @property
    def revision(self) -> int:
        """The current revision: 1, plus one per input set so far (as this process knows)."""
        return self._runtime.revision

    def stats(self) -> DatabaseStats:
        """Per query, a :class:`QueryStats` (hits, misses, executions, total and self time,
        time spent waiting); ``.revisions``: per revision, a :class:`RevisionStats` (how many
        were re-validated green, re-executed, backdated)."""
        return self._runtime.stats()

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._runtime.remote:
            raise TypeError(
                f"{self!r} cannot be pickled: on the {self.backend.name} backend its memos live "
                "in this process. Create it with backend='processes' to use it in other processes."
            )
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k not in _INTERNAL and not isinstance(v, (BoundQuery, _InputMap))
        }
        rt = self._runtime
        return _attach, (type(self), self._token, self.backend, rt.table, rt.revision, state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self.backend.name}>"


_INTERNAL = frozenset({"backend", "_runtime", "_token", _THREAD_QUERIES})


def _check_shippable(cls: type, backend: str) -> None:
    import cloudpickle  # type: ignore[import-untyped]

    try:
        cloudpickle.dumps(cls)
    except Exception as exc:
        raise TypeError(
            f"{cls.__qualname__} cannot be used on the {backend} backend: its queries run in "
            f"worker processes, and the class cannot be pickled to them ({type(exc).__name__}: "
            f"{exc}). Define it at module level, without unpicklable class attributes."
        ) from exc


def _attach(
    cls: type[Database],
    token: str,
    backend: Any,
    table: Any,
    revision: int,
    state: dict[str, Any],
) -> Database:
    """Unpickle a Database: this process's copy of it, sharing the coordinator's job table,
    in the revision the sender was in (or a newer one it already knows)."""
    with _attached_lock:
        db = _attached.get(token)
        if db is None:
            db = cls.__new__(cls)
            db.__dict__.update(state)
            db.backend = backend
            db._token = token
            db._runtime = _Runtime(db, cls._query_descriptors, cls._input_names, table, revision)
            setattr(db, _THREAD_QUERIES, cls._thread_queries(db._runtime))
            _attached[token] = db
    db._runtime.learn_revision(revision)
    return db
