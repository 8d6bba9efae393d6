"""The job table of the query engine: claims, latches, the wait-for graph and the memos.

One table per database. Serial and threads use it in their own process; the processes backend
hosts one in its coordinator, where every worker asks it over IPC (design section 5). The table
runs no user code and never unpickles a value: on processes the memos it holds are the bytes
the clients packed, so the coordinator never imports the user's classes for values (keys it
must hash, so their classes must be importable there, as for any pickle).

A *runner* is one thread asking for queries, named by ``(pid, thread id)``. Its stack is the
jobs it has claimed and not yet published, innermost last; a runner that waits for another's
job records it, and the chain runner -> job waited for -> its owner -> ... is the wait-for graph
that :meth:`JobTable.claim` walks before it waits.

Revisions (salsa's, rustc incremental's): every input change starts a new revision. A memo
records the revision it was last verified in and the one its value last changed in; a claim in
a later revision answers "verify it" with the old memo, and the client re-validates its
dependencies and re-executes the body only if one of them changed (see ``dualmode.query``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any, TypeVar, overload

from .errors import CycleError, WorkerCrashed

__all__ = [
    "ERROR",
    "ERROR_ONCE",
    "FALLBACK",
    "OK",
    "JobTable",
    "Memo",
    "QKey",
    "Runner",
    "canonical_cycle",
]

QKey = tuple[str, tuple[Any, ...]]  # (query name, key arguments)
K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")
Runner = tuple[int, int]  # (pid, thread id)

_SHARDS = 64  # claims on different keys rarely share a lock
_OWNER_CHECK = 0.5  # seconds between checks that a waited-for owner's process is alive

# Memo.state. ERROR_ONCE: an exception delivered to the caller and the waiters but not memoized
# (``cache_errors=False``, or a worker that died): nobody caches it. RETRY: the execution was
# abandoned (cancelled, interrupted); a waiter asks again.
OK, ERROR, FALLBACK, ERROR_ONCE, RETRY = 0, 1, 2, 3, 4
_STATES = ("ok", "error", "fallback", "error_once", "retry")

LOW, MEDIUM, HIGH = 0, 1, 2  # durabilities (dualmode.Durability)

# What JobTable.claim answers: the memo, valid in the caller's revision; a claim to execute
# (nothing memoized) or to verify (an older revision's memo, given); or that the caller's
# revision is not the current one (the current one, given).
MEMO, RUN, VERIFY, STALE = "memo", "run", "verify", "stale"
_RUN = (RUN, None)

# Verdicts a publisher gives: how the (query, key) was brought up to date in its revision.
GREEN, EXECUTED, BACKDATED = "green", "executed", "backdated"


class Memo:
    """A finished query: its value (``OK``), exception (``ERROR``), or ``FALLBACK`` (it lay on
    a cycle: its value is the query's ``cycle=`` fallback, computed by whoever reads it); the
    dependencies it read, in order (None: unknown, so it must execute again in a new
    revision); the revisions it was last verified and last changed in; and its durability,
    the lowest of its dependencies' (HIGH when it read none)."""

    __slots__ = ("changed_at", "deps", "durability", "state", "value", "verified_at")

    def __init__(
        self,
        state: int,
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
        fields = {name: getattr(self, name) for name in Memo.__slots__}
        fields.update(changes)
        return Memo(**fields)

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
            f"Memo({_STATES[self.state]}, {self.value!r}, verified_at={self.verified_at}, "
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


def _sort_key(entry: QKey) -> tuple[str, str, str]:
    name, key = entry
    return name, type(key).__name__, repr(key)


def canonical_cycle(cycle: list[QKey]) -> list[tuple[str, Any]]:
    """The cycle rotated to start at its smallest entry: the same text on every backend."""
    start = min(range(len(cycle)), key=lambda i: _sort_key(cycle[i]))
    rotated = cycle[start:] + cycle[:start]
    return [(name, key[0] if len(key) == 1 else key) for name, key in rotated]


class _Counters:
    __slots__ = ("executions", "hits", "misses", "self_time", "total", "wait")

    def __init__(self) -> None:
        self.hits = self.misses = self.executions = 0
        self.total = self.self_time = self.wait = 0.0


class _RunnerState:
    """What the wait-for graph needs of one runner: only its own thread writes ``stack``, and
    others read it only while the runner waits (its stack is still then) under graph_lock."""

    __slots__ = ("ident", "stack", "waiting")

    def __init__(self, ident: Runner) -> None:
        self.ident = ident
        self.stack: list[_Job] = []
        self.waiting: _Job | None = None


class _Job:
    """A claimed (query, key): who executes it, and the latch its waiters sleep on."""

    __slots__ = ("latch", "old", "outcome", "owner", "qkey", "resolution", "revision", "slot")

    def __init__(
        self, qkey: QKey, slot: Any, owner: _RunnerState, revision: int, old: Memo | None
    ) -> None:
        self.qkey = qkey
        self.slot = slot  # the job-table key: qkey, plus the process for local=True queries
        self.owner = owner
        self.revision = revision
        self.old = old  # the older revision's memo being verified, if any
        # Made by the first waiter, under the shard lock: most jobs never have one.
        self.latch: threading.Event | None = None
        self.resolution: Memo | None = None  # set when a cycle through this job was resolved
        self.outcome: Memo | None = None  # what waiters get, set before the latch opens


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobTable:
    """Single-flight claims and memos of one database's queries (design section 5).

    *fallbacks* names every query and says whether it has a ``cycle=`` fallback. A query
    settled by its fallback gets a ``FALLBACK`` memo: each reader computes the value (the
    table runs no user code, and holds no lock while user code runs).
    """

    remote = False  # values stay objects: no packing to bytes

    def __init__(self, fallbacks: dict[str, bool], volatile: Iterable[str] = ()) -> None:
        self._fallbacks = dict(fallbacks)
        self._volatile = frozenset(volatile)
        self.memos: dict[str, dict[Any, Memo]] = {name: {} for name in fallbacks}
        self._scoped: dict[Any, Memo] = {}  # local=True memos, per (name, key, pid)
        # Per shard (used under its lock): on free-threaded builds one dict that every claim
        # writes would serialize them on the dict's own lock.
        self._jobs: list[dict[Any, _Job]] = [{} for _ in range(_SHARDS)]
        self._locks = [threading.Lock() for _ in range(_SHARDS)]
        self._graph_lock = threading.Lock()  # taken only by a caller about to wait
        # Kept while idle (one per thread that ever asked; a thread id reused later finds an
        # empty one): a claim need not build one each time.
        self._runners: dict[Runner, _RunnerState] = {}
        # Counters per shard, each written only under its shard's lock; stats() sums them.
        self._counters = [{name: _Counters() for name in fallbacks} for _ in range(_SHARDS)]
        # Inputs and revisions: (name, key) -> (value, changed_at, durability).
        self.revision = 1
        self._revision_lock = threading.Lock()
        self._inputs: dict[tuple[str, Any], tuple[Any, int, int]] = {}
        # Per durability, the last revision in which an input at least that durable changed:
        # a memo no input of its durability or more changed since it was verified is green.
        self._last_changed = [1, 1, 1]
        # Per shard (written under its lock): revision -> verdict -> count.
        self._verdicts: list[dict[int, dict[str, int]]] = [{} for _ in range(_SHARDS)]
        # Push-based dirtying (Buck2's DICE): who read each input and query, and per query the
        # last revision in which something it (transitively) read changed. A memo verified
        # since then is green without looking at its dependencies.
        self._dependents: list[dict[QKey, set[QKey]]] = [{} for _ in range(_SHARDS)]
        self._dirty: dict[QKey, int] = {}
        # The revision whose marks are all made. Until it reaches self.revision, no memo is
        # found green from the marks: one not yet marked would look unchanged.
        self._marked = 1

    def _shard(self, slot: Any) -> threading.Lock:
        return self._locks[hash(slot) % _SHARDS]

    def _counts(self, slot: Any, name: str) -> _Counters:
        """The counters of query *name* in *slot*'s shard (its lock held)."""
        return self._counters[hash(slot) % _SHARDS][name]

    # claim and publish hash a slot once (a key tuple's hash is not cached) and use the shard
    # number for its lock, jobs, counters and verdicts.

    # -- claims --------------------------------------------------------------------------------

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        runner: Runner,
        revision: int,
        scope: Any = None,
        hits: Iterable[tuple[str, int]] = (),
    ) -> tuple[str, Any]:
        """Bring ``name(*key)`` up to date in *revision* for *runner*. Answers:

        - ``(MEMO, memo)``: its memo, valid in *revision* (found, found green without looking
          at its dependencies because no input of its durability changed, or computed by
          another runner that this one waited for);
        - ``(RUN, None)`` or ``(VERIFY, old_memo)``: *runner* has claimed it and must execute
          it (or verify the old memo's dependencies, and execute it if one changed), then
          :meth:`publish` or :meth:`abandon` it;
        - ``(STALE, revision)``: *revision* is not the current one, which is given.

        Waiting for another runner's execution adds an edge to the wait-for graph; if that
        closes a cycle, the cycle is settled first (see :meth:`_settle`). *scope* keeps
        separate memos per scope (the processes backend's ``local=True`` queries, per
        process); *hits* are counts a client served from its own cache (sent along to save a
        round trip).
        """
        if hits:
            self.add_hits(hits)
        qkey = (name, key)
        slot = qkey if scope is None else (name, key, scope)
        memos = self.memos[name] if scope is None else self._scoped
        memo_key = key if scope is None else slot
        while True:
            if revision != self.revision:
                return STALE, self.revision
            shard = hash(slot) % _SHARDS
            counters = self._counters[shard][name]
            with self._locks[shard]:
                memo = lookup(memos, memo_key)
                if memo is not None:
                    if memo.verified_at == revision:
                        counters.hits += 1
                        return MEMO, memo
                    if (
                        memo.deps is not None
                        and self._marked == revision
                        and (
                            lookup(self._dirty, qkey, 0) <= memo.verified_at
                            or self._last_changed[memo.durability] <= memo.verified_at
                        )
                    ):
                        memo = memos[memo_key] = memo.replace(verified_at=revision)
                        self._count(shard, revision, GREEN)
                        counters.hits += 1
                        return MEMO, memo
                counters.misses += 1
                jobs = self._jobs[shard]
                job = lookup(jobs, slot)
                if job is None:
                    state = lookup(self._runners, runner)
                    if state is None:
                        state = self._runners[runner] = _RunnerState(runner)
                    job = jobs[slot] = _Job(qkey, slot, state, revision, memo)
                    state.stack.append(job)
                    return _RUN if memo is None else (VERIFY, memo)
                if job.latch is None:
                    job.latch = threading.Event()
                    if job.outcome is not None:  # settled already
                        job.latch.set()
            outcome = self._wait(job, runner)
            if job.revision == revision and outcome.state != RETRY:
                return MEMO, outcome
            # An older revision's job, or an abandoned one: look again.

    def unchanged(self, qkey: QKey, memo: Memo, revision: int) -> bool:
        """Whether *memo* (of this in-process table) is valid in *revision* although it was
        verified in an older one: nothing it read changed since. Takes no lock: the dirty marks
        and revisions it reads only grow, so a stale read errs towards "changed"."""
        if revision != self.revision or revision != self._marked or memo.deps is None:
            return False
        since = memo.verified_at
        dirty = self._dirty
        if qkey not in dirty:  # in and [], not .get: see lookup()
            return True
        return dirty[qkey] <= since or self._last_changed[memo.durability] <= since

    def publish(
        self,
        name: str,
        key: tuple[Any, ...],
        runner: Runner,
        memo: Memo,
        *,
        store: bool = True,
        verdict: str | None = EXECUTED,
        elapsed: float = 0.0,
        self_time: float = 0.0,
        scope: Any = None,
    ) -> Memo | None:
        """Finish *runner*'s claim: memoize *memo* (unless ``store=False``: then only the
        waiters get it) and wake the waiters. *verdict* says how it was brought up to date
        (``GREEN``: verified, the body did not run; ``EXECUTED``; ``BACKDATED``: executed,
        and equal to the old value; None: abandoned). Returns None, or the memo that overrides
        the caller's own (a cycle through this job was settled while its body ran)."""
        slot = (name, key) if scope is None else (name, key, scope)
        state = self._runners[runner]
        job = state.stack.pop()
        assert job.slot == slot, (job.slot, slot)
        # A settled job's memo stays its settlement (only its owner's publish changes it).
        override = job.resolution
        if (verdict in (EXECUTED, BACKDATED) or override is not None) and memo.deps:
            known = job.old.deps if job.old is not None and job.old.deps else ()
            # Edges are never taken away (an extra one only costs a verification later).
            self._add_dependents(job.qkey, memo.deps if not known else set(memo.deps) - set(known))
        if self.revision != job.revision:
            # Inputs changed while it ran: its edges may have been added after the change
            # marked their dependents, so treat it as affected by the change.
            self._mark_dirty(job.qkey, self.revision)
        shard = hash(slot) % _SHARDS
        with self._locks[shard]:
            if verdict in (EXECUTED, BACKDATED):
                counters = self._counters[shard][name]
                counters.executions += 1
                counters.total += elapsed
                counters.self_time += self_time
            if verdict is not None:
                self._count(shard, job.revision, verdict)
            if verdict == GREEN and job.old is not None:  # the table's own copy, re-stamped
                memo = job.old.replace(verified_at=job.revision)
            if override is not None:
                if override.deps is None and memo.deps is not None:
                    override.deps = memo.deps  # what the body read: a later revision verifies it
                memo = override
            elif store:
                if scope is None:
                    self.memos[name][key] = memo
                else:
                    self._scoped[slot] = memo
            elif memo.state == ERROR:
                memo = memo.replace(state=ERROR_ONCE)
            job.outcome = memo
            del self._jobs[shard][slot]
            latch = job.latch
        if latch is not None:
            latch.set()
        return override

    def abandon(self, name: str, key: tuple[Any, ...], runner: Runner, scope: Any = None) -> None:
        """Give up *runner*'s claim without a result (cancelled, or interrupted): nothing is
        memoized, and a waiter asks again (and so executes it itself)."""
        memo = Memo(RETRY, None)
        self.publish(name, key, runner, memo, store=False, verdict=None, scope=scope)

    def add_hits(self, hits: Iterable[tuple[str, int]]) -> None:
        """Count hits that clients served from their own caches."""
        for name, n in hits:
            with self._shard(name):
                self._counts(name, name).hits += n

    def peek(self, name: str, key: tuple[Any, ...], revision: int) -> Memo | None:
        """The memo of ``name(*key)`` if it is valid in *revision*: verified in it, or nothing
        it read changed since (nothing is computed)."""
        memo = lookup(self.memos[name], key)
        if memo is None:
            return None
        if memo.verified_at == revision or self.unchanged((name, key), memo, revision):
            return memo
        return None

    def stats(
        self,
    ) -> tuple[dict[str, tuple[int, int, int, float, float, float]], dict[int, dict[str, int]]]:
        """Per query: hits, misses, executions, total time, self time, wait time; and per
        revision, how many (query, key) were verified green, executed and backdated."""
        queries = {}
        for name in self._fallbacks:
            shards = [counters[name] for counters in self._counters]
            queries[name] = (
                sum(c.hits for c in shards),
                sum(c.misses for c in shards),
                sum(c.executions for c in shards),
                sum(c.total for c in shards),
                sum(c.self_time for c in shards),
                sum(c.wait for c in shards),
            )
        verdicts: dict[int, dict[str, int]] = {}
        for shard, lock in zip(self._verdicts, self._locks, strict=True):
            with lock:
                for revision, counts in shard.items():
                    total = verdicts.setdefault(revision, dict.fromkeys(counts, 0))
                    for verdict, n in counts.items():
                        total[verdict] += n
        return queries, verdicts

    def _count(self, shard: int, revision: int, verdict: str) -> None:
        """Count a verdict (the shard's lock held)."""
        verdicts = self._verdicts[shard]
        counts = lookup(verdicts, revision)
        if counts is None:
            counts = verdicts[revision] = {GREEN: 0, EXECUTED: 0, BACKDATED: 0}
        counts[verdict] += 1

    # In-process tables hand memos over as they are; the processes backend's client packs values
    # to bytes for the coordinator and unpacks them.

    def pack(self, memo: Memo, keep_value: bool = True) -> tuple[Memo, bool]:
        return memo, False

    def unpack(self, memo: Memo) -> Memo:
        return memo

    def pack_value(self, value: Any) -> Any:
        return value

    def unpack_value(self, value: Any) -> Any:
        return value

    # -- inputs and revisions ------------------------------------------------------------------

    def set_input(self, name: str, key: Any, value: Any, durability: int = LOW) -> int:
        """Set an input: a new revision starts (returned). Queries still running in older
        revisions are cancelled at their next claim or input read."""
        with self._revision_lock:
            revision = self.revision + 1
            previous = lookup(self._inputs, (name, key))
            # Memos that read the old value have its durability: they must see the change too.
            changed = durability if previous is None else max(durability, previous[2])
            self._inputs[(name, key)] = (value, revision, durability)
            for level in range(changed + 1):
                self._last_changed[level] = revision
            # Volatile queries change in every revision, as if they read an input just set.
            sources = [(name, (key,))]
            for volatile in self._volatile:
                sources += [(volatile, k) for k in list(self.memos[volatile])]
            self.revision = revision  # before the marks: see publish()
            self._mark_dependents(sources, revision)
            self._marked = revision
        return revision

    def _add_dependents(self, qkey: QKey, deps: Iterable[QKey]) -> None:
        for dep in deps:
            shard = hash(dep) % _SHARDS
            with self._locks[shard]:
                dependents = self._dependents[shard]
                readers = lookup(dependents, dep)
                if readers is None:
                    readers = dependents[dep] = set()
                readers.add(qkey)

    def _mark_dirty(self, qkey: QKey, revision: int) -> None:
        with self._shard(qkey):
            if lookup(self._dirty, qkey, 0) < revision:
                self._dirty[qkey] = revision

    def _mark_dependents(self, sources: list[QKey], revision: int) -> None:
        """Mark everything that (transitively) read *sources* as changed in *revision*."""
        seen: set[QKey] = set()
        todo = list(sources)
        while todo:
            current = todo.pop()
            shard = hash(current) % _SHARDS
            with self._locks[shard]:
                readers = list(lookup(self._dependents[shard], current, ()))
            for reader in readers:
                if reader not in seen:
                    seen.add(reader)
                    self._mark_dirty(reader, revision)
                    todo.append(reader)
        for source in sources:
            if source[0] in self._volatile:
                self._mark_dirty(source, revision)

    def get_input(self, name: str, key: Any, revision: int) -> tuple[str, Any, int, int]:
        """``(MEMO, value, changed_at, durability)`` of input *name* at *key*; ``("missing",
        None, 0, LOW)`` if it was never set; ``(STALE, None, current revision, LOW)`` if
        *revision* is not the current one."""
        entry = lookup(self._inputs, (name, key))
        if revision != self.revision:
            return STALE, None, self.revision, LOW
        if entry is None:
            return "missing", None, 0, LOW
        value, changed_at, durability = entry
        return MEMO, value, changed_at, durability

    def input_changes(
        self, inputs: list[tuple[str, Any]], since: int, revision: int
    ) -> tuple[str, int]:
        """Whether any of *inputs* changed after revision *since*: ``(MEMO, 1 or 0)``, or
        ``(STALE, current revision)`` (one round trip for all of a memo's input reads)."""
        if revision != self.revision:
            return STALE, self.revision
        for name_key in inputs:
            entry = lookup(self._inputs, name_key)
            if entry is not None and entry[1] > since:
                return MEMO, 1
        return MEMO, 0

    # -- waiting and cycles --------------------------------------------------------------------

    def _wait(self, job: _Job, runner: Runner) -> Memo:
        name = job.qkey[0]
        state: _RunnerState | None = None
        with self._graph_lock:
            if job.resolution is None:
                state = lookup(self._runners, runner)
                cycle = None if state is None else self._find_cycle(job, state)
                if cycle is not None:
                    self._settle(cycle)
                if job.resolution is None:
                    if job.owner is state:
                        # A fallback-less query on my own stack, on a cycle settled through a
                        # fallback: waiting for it would wait for myself. Unwind to it.
                        assert cycle is not None
                        error = CycleError(canonical_cycle([j.qkey for j in cycle]))
                        return Memo(ERROR, error, None, job.revision, job.revision, LOW)
                    if state is None:
                        state = self._runners[runner] = _RunnerState(runner)
                    state.waiting = job  # its chain reaches a running or settled job
        start = time.perf_counter()
        self._sleep(job)
        waited = time.perf_counter() - start
        with self._graph_lock:
            if state is not None:
                state.waiting = None
        with self._shard(job.slot):
            self._counts(job.slot, name).wait += waited
        assert job.outcome is not None  # set before the latch opened
        return job.outcome

    def _sleep(self, job: _Job) -> None:
        """Wait for *job*'s latch; if its owner's process dies first, abandon it for them."""
        owner_pid = job.owner.ident[0]
        latch = job.latch
        assert latch is not None  # made by claim before it waits
        while not latch.wait(_OWNER_CHECK):
            if not _alive(owner_pid):
                self._abandon_dead(job)

    def _abandon_dead(self, job: _Job) -> None:
        name, key = job.qkey
        error = WorkerCrashed(
            f"the worker process (pid {job.owner.ident[0]}) executing query {name}{key!r} "
            "died; nothing was memoized, so asking again executes it again"
        )
        shard = hash(job.slot) % _SHARDS
        with self._locks[shard]:
            if lookup(self._jobs[shard], job.slot) is not job:
                return  # published meanwhile
            del self._jobs[shard][job.slot]
            job.outcome = Memo(ERROR_ONCE, error, None, job.revision, job.revision)
        with self._graph_lock:
            self._runners.pop(job.owner.ident, None)
        assert job.latch is not None  # a waiter is here
        job.latch.set()

    def _find_cycle(self, job: _Job, me: _RunnerState) -> list[_Job] | None:
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
                return None  # settled: waiting for it ends at once
            owner = current.owner
            if owner is not me and owner.waiting is None:
                return None  # it is running, so the chain ends: no cycle
            frames = owner.stack  # mine, or a waiting owner's: still while graph_lock is held
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

    def _settle(self, cycle: list[_Job]) -> None:
        """Settle a cycle now (graph_lock held), the same way whichever request closed it.

        If some queries on it have a ``cycle=`` fallback, those take their fallback values and
        the others are not poisoned: they go on and compute from them. Without any fallback,
        every query on the cycle gets the same CycleError. Settled jobs' waiters wake now; the
        bodies still running finish, and their own results are dropped for these. A settled
        memo keeps the revision it changed in if the old one was settled the same way (so its
        dependents stay green), and is verified again in every new revision.
        """
        error = CycleError(canonical_cycle([job.qkey for job in cycle]))
        with_fallback = [job for job in cycle if self._fallbacks[job.qkey[0]]]
        for job in with_fallback or cycle:
            if self._fallbacks[job.qkey[0]]:
                state, value = FALLBACK, None
            else:
                state, value = ERROR, error
            old = job.old
            same = (
                old is not None
                and old.state == state
                and (state == FALLBACK or _same_cycle(old.value, error))
            )
            changed_at = old.changed_at if same and old is not None else job.revision
            memo = Memo(state, value, None, job.revision, changed_at, LOW)
            with self._shard(job.slot):
                job.resolution = job.outcome = memo
                if job.slot == job.qkey:
                    self.memos[job.qkey[0]][job.qkey[1]] = memo
                else:
                    self._scoped[job.slot] = memo
                if job.latch is not None:
                    job.latch.set()


def _same_cycle(value: Any, error: CycleError) -> bool:
    return isinstance(value, CycleError) and value.cycle == error.cycle
