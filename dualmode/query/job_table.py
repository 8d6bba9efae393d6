"""The job table: claims, latches, the wait-for graph, memos, inputs and revisions.

One table per database, behind one interface, :class:`JobTable`, that the query runtime
(``dualmode.query.runtime``) uses whichever backend made it (``Backend.create_job_table``):

- :class:`InProcessJobTable` (serial, threads): the table itself, in this process.
- the processes backend's hosted client (``dualmode.backends.processes``): the same
  in-process table runs in the coordinator, and each process holds a client that packs
  values to bytes, keeps a cache of the memos it has executed or received, and reports the
  hits served from that cache with its claims.

The table runs no user code, and never unpickles a value: in the coordinator the memos it
holds are the bytes the clients packed (keys it must hash, so their classes must be
importable there, as for any pickle). The protocol, and where each of its invariants is
enforced, is described in ``docs/architecture.md#the-query-protocol``.

A thread that asks for queries is named by a :data:`~dualmode.query.memo.ThreadId`. The table
keeps, per thread, the jobs it has claimed and not yet published (its stack, innermost last)
and the job it waits for: the chain thread -> job waited for -> its owner -> ... is the
wait-for graph that :meth:`InProcessJobTable.claim` walks before it waits.

Revisions (salsa's, rustc incremental's): every input change starts a new revision. A memo
records the revision it was last verified in and the one its value last changed in; a claim
in a later revision answers :attr:`Claim.VERIFY` with the old memo, and the runtime verifies
its dependencies and executes the body again only if one of them changed.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..errors import CycleError, WorkerCrashed
from ..parking_lot import Latch, Waiter
from ..watchdog import Awaited, Watchdog
from .lru import evict
from .memo import (
    COUNTED_REVISIONS,
    LOW,
    ImmortalEnum,
    Memo,
    MemoState,
    QKey,
    ThreadId,
    lookup,
)
from .revision_ring import RevisionCounts, RevisionLists

__all__ = [
    "Claim",
    "HandOver",
    "HitCounts",
    "InProcessJobTable",
    "InputCheck",
    "InputState",
    "JobTable",
    "TableStats",
    "Verdict",
    "canonical_cycle",
]

_SHARDS = 64  # claims on different keys rarely share a lock
# Revisions whose dirty marks are kept listed for JobTable.changes: a thread further behind
# forgets its copies of the memos (see ThreadState.advance).
_LISTED_REVISIONS = 64
_OWNER_CHECK = 0.5  # seconds between checks that a waited-for owner's process is alive

OK, ERROR, FALLBACK, ERROR_ONCE, RETRY, EVICTED, RERUN = (
    MemoState.OK,
    MemoState.ERROR,
    MemoState.FALLBACK,
    MemoState.ERROR_ONCE,
    MemoState.RETRY,
    MemoState.EVICTED,
    MemoState.RERUN,
)


class Claim(ImmortalEnum):
    """What :meth:`JobTable.claim` answers, with its payload."""

    MEMO = enum.auto()  # the memo (payload), valid in the caller's revision
    RUN = enum.auto()  # claimed, nothing memoized: execute it (payload None)
    VERIFY = enum.auto()  # claimed: verify the older revision's memo (payload), execute if stale
    STALE = enum.auto()  # the caller's revision is over: the current one is the payload


class Verdict(ImmortalEnum):
    """How a published (query, key) was brought up to date in its revision."""

    GREEN = enum.auto()  # verified: nothing it read changed, the body did not run
    EXECUTED = enum.auto()  # the body ran
    BACKDATED = enum.auto()  # the body ran and gave a result equal to the old one


class InputState(ImmortalEnum):
    """What :meth:`JobTable.get_input` found."""

    SET = enum.auto()  # the input has a value
    UNSET = enum.auto()  # it was never set
    STALE = enum.auto()  # the caller's revision is over


class InputCheck(ImmortalEnum):
    """What :meth:`JobTable.input_changes` found."""

    CHANGED = enum.auto()
    UNCHANGED = enum.auto()
    STALE = enum.auto()  # the caller's revision is over


HitCounts = list[tuple[str, int]]  # (query name, hits) not yet reported to the table
# JobTable.stats(): per query (hits, misses, executions, total time, self time, wait time,
# values held), and per revision the count of each verdict.
TableStats = tuple[
    dict[str, tuple[int, int, int, float, float, float, int]], dict[int, dict[Verdict, int]]
]

# The members the code below uses, as module globals: an enum member read from its class
# (Claim.MEMO) costs a Python-level lookup (~50 ns on 3.11) on every claim and publish.
MEMO, RUN, VERIFY, STALE = Claim.MEMO, Claim.RUN, Claim.VERIFY, Claim.STALE
GREEN, EXECUTED, BACKDATED = Verdict.GREEN, Verdict.EXECUTED, Verdict.BACKDATED
_WAIT: Any = object()  # claim(_no_wait=True): the job to wait for is the payload
SET, UNSET, INPUT_STALE = InputState.SET, InputState.UNSET, InputState.STALE
CHANGED, UNCHANGED, CHECK_STALE = InputCheck.CHANGED, InputCheck.UNCHANGED, InputCheck.STALE


class HandOver(Protocol):
    """A sync body that a task claimed and queued for a worker (``dualmode.query.awaiting``).
    A thread about to wait for it, or for a job whose chain of owners ends at it, runs it
    instead if no worker has started it: the workers may all be such waiters
    (docs/queries.md#async-queries)."""

    @property
    def pending(self) -> bool:
        """Whether nobody has started it (nor has the task cancelled it) yet."""
        ...

    def take_over(self, old: Memo | None) -> bool:
        """Run the body on this thread, *old* the memo its claim answered, unless it has
        started or was cancelled: whether it ran."""
        ...


class JobTable(Protocol):
    """One database's job table, as the query runtime of one process uses it.

    Every method may be called from any thread. Memos and values go in and come out as
    objects, in this process (a table elsewhere converts them on the way). The claim
    protocol: :meth:`claim` a (query, key); on ``RUN``/``VERIFY`` the caller owns it and must
    :meth:`publish` or :meth:`abandon` it; every other caller of that key waits for the owner
    (after a cycle check) and gets what it published.
    """

    @property
    def shared(self) -> bool:
        """Whether other processes reach this table: then a database on it travels to them
        (pickles), and its inputs are set in the process that created it."""
        ...

    @property
    def memos(self) -> Mapping[str, dict[tuple[Any, ...], Memo]]:
        """Per query, memos this process may read without a claim: valid in revision *r*
        when verified in *r*, or when :meth:`unchanged` says so. Only the table writes them;
        read them with ``in`` and ``[]`` (see :func:`~dualmode.query.memo.lookup`)."""
        ...

    @property
    def scope(self) -> Hashable | None:
        """What ``local=True`` queries' memos are kept per: None where every memo is in this
        process anyway, else this process."""
        ...

    def attach(
        self,
        queries: Iterable[str],
        unreported_hits: Callable[[], HitCounts],
        lru: Mapping[str, int] | None = None,
    ) -> None:
        """Called once by each process's runtime, before it reads :attr:`memos`: the
        database's query names, and how to read the calling thread's hits that the table
        has not counted yet (served from the thread's own caches). A table in this process
        is asked for its stats in this process and may ignore the latter; a table elsewhere
        sends them along with claims. *lru*: the queries declared with ``lru=N``, and N:
        the most values of each to keep from one revision to the next (see
        ``dualmode.query.lru``); a cache of this process's keeps at most N too."""
        ...

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> tuple[Claim, Any]:
        """Bring ``name(*key)`` up to date in *revision* for *thread*: see :class:`Claim`.
        Waits while another thread owns it; raises nothing for a cycle (the cycle's result is
        the memo answered). *scope*: :attr:`scope` for a ``local=True`` query, else None."""
        ...

    def unchanged(self, qkey: QKey, memo: Memo, revision: int) -> bool:
        """Whether *memo*, from :attr:`memos`, is valid in *revision* although it was
        verified in an older one, known without a claim; False when that takes a claim."""
        ...

    def changes(self, since: int) -> set[QKey] | None:
        """Every (query, key) that may have changed after revision *since*: a memo valid in
        *since* and not among them is valid in every later revision (until more inputs
        change). None when the table cannot tell without claims (then nothing may be
        assumed)."""
        ...

    def publish(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        memo: Memo,
        *,
        store: bool = True,
        verdict: Verdict | None = Verdict.EXECUTED,
        elapsed: float = 0.0,
        self_time: float = 0.0,
        scope: Hashable | None = None,
    ) -> Memo:
        """Finish *thread*'s claim: memoize *memo* (unless ``store=False``: then only the
        waiters get it) and wake the waiters. Returns the memo in force: *memo*, the one a
        cycle settled while the body ran, or one whose exception says why *memo*'s value
        cannot travel to the table."""
        ...

    def abandon(
        self, name: str, key: tuple[Any, ...], thread: ThreadId, scope: Hashable | None = None
    ) -> None:
        """Give up *thread*'s claim without a result: nothing is memoized; a waiter asks
        again (and so executes it itself)."""
        ...

    def prefetching(
        self,
        name: str,
        keys: list[tuple[Any, ...]],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> AbstractContextManager[None]:
        """Around *thread*'s prefetch of *keys* of query *name*, one chunk (*scope*: as for
        :meth:`claim`): a table in another process may claim them all in one request and
        take what the thread publishes in batches. A table in this process does nothing."""
        ...

    def peek(
        self, name: str, key: tuple[Any, ...], revision: int, scope: Hashable | None = None
    ) -> Memo | None:
        """The memo of ``name(*key)`` if it is valid in *revision*; nothing is computed."""
        ...

    def add_hits(self, hits: HitCounts) -> None:
        """Count hits that a process served from its own caches."""
        ...

    def stats(self) -> TableStats:
        """Per query: hits, misses, executions, total time, self time, wait time, values
        held (memos with a value or an exception); and per revision, how many (query, key)
        got each :class:`Verdict`."""
        ...

    def set_input(self, name: str, key: Hashable, value: Any, durability: int = LOW) -> int:
        """Set an input at a :class:`Durability` level: a new revision starts (returned)."""
        ...

    def get_input(
        self, name: str, key: Hashable, revision: int
    ) -> tuple[InputState, Any, int, int]:
        """``(SET, value, changed_at, durability)``; ``(UNSET, None, 0, LOW)`` if it was never
        set; ``(STALE, None, current revision, LOW)`` if *revision* is not the current one."""
        ...

    def input_changes(
        self, inputs: list[tuple[str, Hashable]], since: int, revision: int
    ) -> tuple[InputCheck, int]:
        """Whether any of *inputs* changed after revision *since*: ``(CHANGED, 0)`` or
        ``(UNCHANGED, 0)``, or ``(STALE, current revision)`` (one round trip for all of a
        memo's input reads)."""
        ...

    def prefetch_inputs(self, name: str, keys: list[Hashable], revision: int) -> None:
        """Bring input *name*'s values at *keys* in *revision* into this process in one
        request, so that :meth:`get_input` answers them in that revision with none. A table
        in this process does nothing."""
        ...


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


class _ThreadJobs:
    """What the wait-for graph needs of one thread: the jobs it owns (claimed, not yet
    published, innermost last) and the job it waits for. Only its own thread writes
    ``stack``; others read it only while it waits (its stack is still then), under
    graph_lock."""

    __slots__ = ("stack", "taking", "thread", "waiting")

    def __init__(self, thread: ThreadId) -> None:
        self.thread = thread
        self.stack: list[_Job] = []
        self.waiting: _Job | None = None
        # The handed-over job whose body this thread runs while it waits (_sleep): until that
        # body ends, the thread cannot go on, even once the job it waits for is done.
        self.taking: _Job | None = None


class _Job:
    """A claimed (query, key): the thread that owns (executes) it, and the latch its waiters
    sleep on."""

    __slots__ = (
        "hand_over",
        "latch",
        "old",
        "owner",
        "qkey",
        "result",
        "revision",
        "settlement",
        "slot",
    )

    def __init__(
        self,
        qkey: QKey,
        slot: Any,
        owner: _ThreadJobs,
        revision: int,
        old: Memo | None,
        hand_over: HandOver | None = None,
    ) -> None:
        self.qkey = qkey
        self.slot = slot  # the job-table key: qkey, plus the scope for local=True queries
        self.owner = owner
        self.revision = revision
        self.old = old  # the older revision's memo being verified, if any
        # Made by the first waiter, under the shard lock: most jobs never have one.
        self.latch: Latch | None = None
        self.settlement: Memo | None = None  # set when a cycle through this job was settled
        self.result: Memo | None = None  # what waiters get, set before the latch opens
        self.hand_over = hand_over  # its body, queued for a worker by the task that owns it


class _Sleeper(Waiter):
    """A thread waiting in the table for a job's latch (granted when it opens), which a task
    handing a body over also wakes (:meth:`nudge`): the wait may now be stuck behind it."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    nudge = wake

    def sleep(self, timeout: float) -> bool:
        """Until woken (True; then look at ``granted``) or *timeout* seconds pass (False)."""
        if self._event.wait(timeout):
            self._event.clear()  # before the caller reads granted: no wake-up is lost
            return True
        return False


def _woken(sleeper: _Sleeper) -> bool:
    """The watchdog's interrupt of a latch wait: the sleeper looks at its record's error."""
    sleeper.nudge()
    return True


# Runs a call on a thread of its own, awaited (anyio.to_thread.run_sync).
_Helper = Callable[[Callable[[Memo | None], bool], Memo | None], Awaitable[Any]]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether *pid* has exited but is not reaped yet: the process that created a database
    on processes is its workers' parent, and a worker killed there stays a zombie until its
    pool reaps it (Linux's /proc says so; elsewhere, False)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _no_verdicts() -> dict[Verdict, int]:
    return dict.fromkeys(Verdict, 0)


_VERDICTS = list(Verdict)  # the order of a revision's counters (RevisionCounts)
_VERDICT_INDEX = {verdict: i for i, verdict in enumerate(_VERDICTS)}


class InProcessJobTable:
    """The :class:`JobTable` of one database, in this process: single-flight claims, the
    wait-for graph, memos, inputs and revisions.

    *fallbacks* names every query and says whether it has a ``cycle=`` fallback. A query
    settled by its fallback gets a ``FALLBACK`` memo: each reader computes the value (the
    table runs no user code, and holds no lock while user code runs).
    """

    shared = False
    scope: Hashable | None = None
    # The backend's deadlock watchdog (set by Backend.create_job_table): a thread waiting for
    # a query's latch is recorded, held by the query's owner, so a cycle through locks and
    # queries is found. Query-only cycles raise CycleError at once and never wait that long.
    watcher: Watchdog | None = None

    def __init__(self, fallbacks: dict[str, bool], volatile: Iterable[str] = ()) -> None:
        self._fallbacks = dict(fallbacks)
        self._volatile = frozenset(volatile)
        self.memos: dict[str, dict[Any, Memo]] = {name: {} for name in fallbacks}
        self._scoped: dict[Any, Memo] = {}  # local=True memos, per (name, key, scope)
        # Per shard (used under its lock): on free-threaded builds one dict that every claim
        # writes would serialize them on the dict's own lock.
        self._jobs: list[dict[Any, _Job]] = [{} for _ in range(_SHARDS)]
        self._locks = [threading.Lock() for _ in range(_SHARDS)]
        self._graph_lock = threading.Lock()  # taken only by a caller about to wait
        self._sleepers: set[_Sleeper] = set()  # threads waiting for a latch (graph_lock)
        # Kept while idle (one per thread that ever asked; a thread id reused later finds an
        # empty one): a claim need not build one each time.
        self._threads: dict[ThreadId, _ThreadJobs] = {}
        # Counters per shard, each written only under its shard's lock; stats() sums them.
        self._counters = [{name: _Counters() for name in fallbacks} for _ in range(_SHARDS)]
        # Inputs and revisions: (name, key) -> (value, changed_at, durability).
        self.revision = 1
        self._revision_lock = threading.Lock()
        self._inputs: dict[tuple[str, Any], tuple[Any, int, int]] = {}
        # Per durability, the last revision in which an input at least that durable changed:
        # a memo no input of its durability or more changed since it was verified is green.
        self._last_changed = [1, 1, 1]
        # Per shard (written under its lock): per revision, the count of each verdict.
        self._verdicts = [
            RevisionCounts(COUNTED_REVISIONS + 1, len(_VERDICTS)) for _ in range(_SHARDS)
        ]
        # Push-based dirtying (Buck2's DICE): who read each input and query, and per query the
        # last revision in which something it (transitively) read changed. A memo verified
        # since then is green without looking at its dependencies.
        self._dependents: list[dict[QKey, set[QKey]]] = [{} for _ in range(_SHARDS)]
        self._dirty: dict[QKey, int] = {}
        # Per revision, the keys marked in it, for changes(); each revision's list is started
        # by set_input before that revision is in force.
        self._marked_in: RevisionLists[QKey] = RevisionLists(_LISTED_REVISIONS + 1)
        # The revision whose marks are all made. Until it reaches self.revision, no memo is
        # found green from the marks: one not yet marked would look unchanged.
        self._marked = 1
        self._lru: dict[str, int] = {}  # @dm.query(lru=N): values beyond N dropped (set_input)

    def _shard(self, slot: Any) -> threading.Lock:
        return self._locks[hash(slot) % _SHARDS]

    def _shard_of_key(self, name: str) -> Callable[[Any], threading.Lock]:
        """The lock of the shard of each key of query *name* (its memos' slots)."""
        return lambda key: self._locks[hash((name, key)) % _SHARDS]

    def _counts(self, slot: Any, name: str) -> _Counters:
        """The counters of query *name* in *slot*'s shard (its lock held)."""
        return self._counters[hash(slot) % _SHARDS][name]

    def attach(
        self,
        queries: Iterable[str],
        unreported_hits: Callable[[], HitCounts],
        lru: Mapping[str, int] | None = None,
    ) -> None:
        """Keeps *lru*, the bounds it applies in :meth:`set_input`. Nothing else to do: this
        table knows its queries, and the runtime in this process reports its hits before it
        asks for stats()."""
        self._lru = dict(lru or {})

    # claim and publish hash a slot once (a key tuple's hash is not cached) and use the shard
    # number for its lock, jobs, counters and verdicts.

    # -- claims --------------------------------------------------------------------------------

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
        hits: Iterable[tuple[str, int]] = (),
        _no_wait: bool = False,
        refuse: Callable[[], None] | None = None,
        hand_over: HandOver | None = None,
    ) -> tuple[Claim, Any]:
        """See :meth:`JobTable.claim`. A memo is answered when it was verified in *revision*,
        found green without looking at its dependencies (no input of its durability changed,
        or nothing it read was marked), or computed by the owner this thread waited for.

        Waiting for another thread's execution adds an edge to the wait-for graph; if that
        closes a cycle, the cycle is settled first (see :meth:`_settle`). *scope* keeps
        separate memos per scope (the processes backend's ``local=True`` queries, per
        process); *hits* are counts a client served from its own cache (sent along to save a
        round trip). *refuse*: called (to raise) instead of sleeping, after the cycle check,
        where this caller must not wait (a thread whose event loop runs). *hand_over*: the
        body of the job this claim would create, which a task queues for a worker.
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
                    valid = self._valid(memo, qkey, revision, shard, memos, memo_key)
                    if valid is not None:
                        counters.hits += 1
                        return MEMO, valid
                counters.misses += 1
                jobs = self._jobs[shard]
                job = lookup(jobs, slot)
                if job is None:
                    owner = lookup(self._threads, thread)
                    if owner is None:
                        owner = self._threads[thread] = _ThreadJobs(thread)
                    job = jobs[slot] = _Job(qkey, slot, owner, revision, memo, hand_over)
                    owner.stack.append(job)
                    return (RUN, None) if memo is None else (VERIFY, memo)
                if job.latch is None:
                    job.latch = Latch()
                    if job.result is not None:  # settled already
                        job.latch.set()
            if _no_wait:  # async_claim waits itself
                return _WAIT, job
            self._before_wait(thread)
            result = self._wait(job, thread, refuse)
            if (job.revision == revision and result.state is not RETRY) or result.state is RERUN:
                return MEMO, result
            # An older revision's job, or an abandoned one: look again.

    async def async_claim(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        hand_over: HandOver | None = None,
        helper: _Helper | None = None,
    ) -> tuple[Claim, Any]:
        """:meth:`claim` for a task (*thread*: its own id in the wait-for graph), awaited: a
        wait for another caller's job parks the task on its event loop (the graph is checked
        first, as for a thread). Cancelled while it waits, it leaves the graph and the latch's
        queue, and has claimed nothing. (Not for ``local=True`` scopes: only runtimes whose
        table is in their own process use it.) *hand_over*: see :meth:`claim`; the threads
        waiting in the table are woken to look for it once it is claimed. *helper*: for a
        task of a sync caller's private loop, see :meth:`_async_sleep`."""
        while True:
            found = self.claim(name, key, thread, revision, _no_wait=True, hand_over=hand_over)
            kind = found[0]
            if kind is not _WAIT:
                if hand_over is not None and (kind is RUN or kind is VERIFY):
                    self._nudge()
                return found
            job: _Job = found[1]
            result = await self._async_wait(job, thread, helper)
            if (job.revision == revision and result.state is not RETRY) or result.state is RERUN:
                return MEMO, result

    def _valid(
        self,
        memo: Memo,
        qkey: QKey,
        revision: int,
        shard: int,
        memos: dict[Any, Memo],
        memo_key: Any,
    ) -> Memo | None:
        """*memo* valid in *revision*: verified in it, or found green without looking at its
        dependencies (then re-stamped and counted GREEN); else None. The shard's lock held."""
        if memo.verified_at == revision:
            return memo
        if (
            memo.deps is not None
            and memo.state is not EVICTED  # its claim's owner computes the value
            and self._marked == revision
            and (
                lookup(self._dirty, qkey, 0) <= memo.verified_at
                or self._last_changed[memo.durability] <= memo.verified_at
            )
        ):
            memo = memos[memo_key] = memo.verified(revision)
            self._count(shard, revision, GREEN)
            return memo
        return None

    def _before_wait(self, thread: ThreadId) -> None:
        """Called when *thread*'s claim is about to wait for another's job: a subclass that
        lets a thread hold jobs it has not started gives them up here (a thread that waits
        while others wait for its unstarted jobs would deadlock them)."""

    def unchanged(self, qkey: QKey, memo: Memo, revision: int) -> bool:
        """See :meth:`JobTable.unchanged`. Takes no lock: the dirty marks and revisions it
        reads only grow, so a stale read errs towards "changed"."""
        if revision != self.revision or revision != self._marked or memo.deps is None:
            return False
        since = memo.verified_at
        dirty = self._dirty
        if qkey not in dirty:  # in and [], not .get: see lookup()
            return True
        return dirty[qkey] <= since or self._last_changed[memo.durability] <= since

    def changes(self, since: int) -> set[QKey] | None:
        """See :meth:`JobTable.changes`: what was marked after *since*; None while a
        revision's marks are being made, or when they are no longer listed."""
        latest = self._marked
        if latest != self.revision or since < latest - _LISTED_REVISIONS:
            return None
        changed: set[QKey] = set()
        for revision in range(since + 1, latest + 1):
            listed = self._marked_in.get(revision)
            if listed is not None:
                changed.update(listed)
        return changed

    def publish(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        memo: Memo,
        *,
        store: bool = True,
        verdict: Verdict | None = EXECUTED,
        elapsed: float = 0.0,
        self_time: float = 0.0,
        scope: Hashable | None = None,
    ) -> Memo:
        """See :meth:`JobTable.publish`. *verdict* None: abandoned (counted nowhere). A
        ``GREEN`` memo stored is the table's own old one, re-stamped (a client elsewhere sends
        it without its value)."""
        given = memo
        slot = (name, key) if scope is None else (name, key, scope)
        owner = self._threads[thread]
        job = owner.stack.pop()
        assert job.slot == slot, (job.slot, slot)
        # A settled job's memo stays its settlement (only its owner's publish changes it).
        settlement = job.settlement
        executed = verdict is EXECUTED or verdict is BACKDATED
        if (executed or settlement is not None) and memo.deps:
            known = job.old.deps if job.old is not None and job.old.deps else ()
            # Edges are never taken away (an extra one only costs a verification later).
            self._record_edges(thread, job.qkey, memo.deps, known)
        # After the edges: a set_input that found none of them has moved the revision by now.
        if self.revision != job.revision:
            # Inputs changed while it ran: its edges may have been added after the change
            # marked their dependents, so treat it as affected by the change.
            self._mark_dirty(job.qkey, self.revision)
        shard = hash(slot) % _SHARDS
        with self._locks[shard]:
            if executed:
                counters = self._counters[shard][name]
                counters.executions += 1
                counters.total += elapsed
                counters.self_time += self_time
            if verdict is not None:
                self._count(shard, job.revision, verdict)
            if verdict is GREEN and job.old is not None:
                memo = job.old.verified(job.revision)
            if settlement is not None:
                if settlement.deps is None and memo.deps is not None:
                    settlement.deps = memo.deps  # what the body read: a later revision verifies it
                memo = settlement
            elif store:
                if scope is None:
                    self.memos[name][key] = memo
                else:
                    self._scoped[slot] = memo
            elif memo.state is ERROR:
                memo = memo.replace(state=ERROR_ONCE)
            job.result = memo
            del self._jobs[shard][slot]
            latch = job.latch
        if latch is not None:
            latch.set()
        return given if settlement is None else settlement

    def abandon(
        self, name: str, key: tuple[Any, ...], thread: ThreadId, scope: Hashable | None = None
    ) -> None:
        """See :meth:`JobTable.abandon`."""
        self.publish(name, key, thread, Memo(RETRY, None), store=False, verdict=None, scope=scope)

    def prefetching(
        self,
        name: str,
        keys: list[tuple[Any, ...]],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> AbstractContextManager[None]:
        """See :meth:`JobTable.prefetching`: nothing to do, claims cost no round trip here."""
        return contextlib.nullcontext()

    def add_hits(self, hits: Iterable[tuple[str, int]]) -> None:
        """Count hits that clients served from their own caches."""
        for name, n in hits:
            with self._shard(name):
                self._counts(name, name).hits += n

    def peek(
        self, name: str, key: tuple[Any, ...], revision: int, scope: Hashable | None = None
    ) -> Memo | None:
        """See :meth:`JobTable.peek`: verified in *revision*, or nothing it read changed
        since. (*scope*: a client elsewhere answers ``local=True`` memos itself.)"""
        memo = lookup(self.memos[name], key)
        if memo is None or memo.state is EVICTED:
            return None
        if memo.verified_at == revision or self.unchanged((name, key), memo, revision):
            return memo
        return None

    def stats(self) -> TableStats:
        """See :meth:`JobTable.stats`."""
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
                sum(
                    1 for m in list(self.memos[name].values()) if m.state is OK or m.state is ERROR
                ),
            )
        verdicts: dict[int, dict[Verdict, int]] = {}
        oldest = self.revision - COUNTED_REVISIONS
        for shard, lock in zip(self._verdicts, self._locks, strict=True):
            with lock:
                for revision, counts in shard.items(oldest):
                    total = verdicts.setdefault(revision, _no_verdicts())
                    for verdict, n in zip(_VERDICTS, counts, strict=True):
                        total[verdict] += n
        return queries, verdicts

    def _count(self, shard: int, revision: int, verdict: Verdict) -> None:
        """Count a verdict (the shard's lock held); not one of a revision no longer counted
        (a body that ran across many input changes)."""
        if revision < self.revision - COUNTED_REVISIONS:
            return
        self._verdicts[shard].add(revision, _VERDICT_INDEX[verdict])

    # -- inputs and revisions ------------------------------------------------------------------

    def set_input(self, name: str, key: Hashable, value: Any, durability: int = LOW) -> int:
        """See :meth:`JobTable.set_input`. Queries still running in older revisions are
        cancelled at their next claim or input read."""
        with self._revision_lock:
            revision = self.revision + 1
            previous = lookup(self._inputs, (name, key))
            # Memos that read the old value have its durability: they must see the change too.
            changed = durability if previous is None else max(durability, previous[2])
            self._inputs[(name, key)] = (value, revision, durability)
            for level in range(changed + 1):
                self._last_changed[level] = revision
            self._marked_in.start(revision)  # before a publish may mark in it
            # Volatile queries change in every revision, as if they read an input just set.
            sources = [(name, (key,))]
            for volatile in self._volatile:
                sources += [(volatile, k) for k in list(self.memos[volatile])]
            self.revision = revision  # before the marks: see publish()
            self._take_deferred_edges()
            self._mark_dependents(sources, revision)
            # Before the marks count: until then no memo is re-stamped green, nor carried.
            for lru_name, limit in self._lru.items():
                evict(self.memos[lru_name], limit, self._shard_of_key(lru_name), revision)
            self._marked = revision
        return revision

    def _record_edges(
        self, thread: ThreadId, qkey: QKey, deps: tuple[QKey, ...], known: tuple[QKey, ...]
    ) -> None:
        """*qkey* read *deps*, of which *known* were recorded before: the new edges go into the
        dependents graph that set_input marks through (a subclass may defer them until the
        next set_input, see _take_deferred_edges)."""
        self._add_dependents(qkey, deps if not known else set(deps) - set(known))

    def _take_deferred_edges(self) -> None:
        """Add the edges a subclass deferred (called by set_input before it marks)."""

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
        shard = hash(qkey) % _SHARDS
        with self._locks[shard]:
            if lookup(self._dirty, qkey, 0) < revision:
                self._dirty[qkey] = revision
                self._marked_in.add(revision, qkey)

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

    def get_input(
        self, name: str, key: Hashable, revision: int
    ) -> tuple[InputState, Any, int, int]:
        """See :meth:`JobTable.get_input`."""
        entry = lookup(self._inputs, (name, key))
        if revision != self.revision:
            return INPUT_STALE, None, self.revision, LOW
        if entry is None:
            return UNSET, None, 0, LOW
        value, changed_at, durability = entry
        return SET, value, changed_at, durability

    def prefetch_inputs(self, name: str, keys: list[Hashable], revision: int) -> None:
        """See :meth:`JobTable.prefetch_inputs`: nothing to do, reads cost no round trip here."""

    def input_changes(
        self, inputs: list[tuple[str, Hashable]], since: int, revision: int
    ) -> tuple[InputCheck, int]:
        """See :meth:`JobTable.input_changes`."""
        if revision != self.revision:
            return CHECK_STALE, self.revision
        for name_key in inputs:
            entry = lookup(self._inputs, name_key)
            if entry is not None and entry[1] > since:
                return CHANGED, 0
        return UNCHANGED, 0

    # -- waiting and cycles --------------------------------------------------------------------

    def _wait(self, job: _Job, thread: ThreadId, refuse: Callable[[], None] | None) -> Memo:
        if job.result is not None:  # published, settled or given up meanwhile (_before_wait)
            return job.result
        found, me = self._enter_wait(job, thread)
        if found is not None:
            return found
        start = time.perf_counter()
        ran = 0.0
        try:
            if refuse is not None and job.result is None:
                refuse()
            ran = self._sleep(job, me)
        finally:
            self._leave_wait(job, me, time.perf_counter() - start - ran)
        assert job.result is not None  # set before the latch opened
        return job.result

    def forget(self, thread: ThreadId) -> None:
        """Drop the record of a caller that will not ask again (a task's id: one per task,
        so the records would pile up), unless it still owns or waits for a job."""
        with self._graph_lock:
            mine = lookup(self._threads, thread)
            if mine is not None and not mine.stack and mine.waiting is None:
                del self._threads[thread]

    async def _async_wait(self, job: _Job, thread: ThreadId, helper: _Helper | None) -> Memo:
        """:meth:`_wait` for a task: the latch is awaited; cancelled, the task leaves the
        wait-for graph before the cancellation goes on."""
        if job.result is not None:
            return job.result
        found, me = self._enter_wait(job, thread)
        if found is not None:
            return found
        # The chains of threads already asleep may now end at a hand-over, and a task does
        # not take it over: they look again.
        self._nudge()
        start = time.perf_counter()
        assert job.latch is not None  # made by claim before it waits
        try:
            if helper is None:
                await job.latch.async_wait()
            else:
                await self._async_sleep(job, helper)
        finally:
            self._leave_wait(job, me, time.perf_counter() - start)
        assert job.result is not None
        return job.result

    async def _async_sleep(self, job: _Job, helper: _Helper) -> None:
        """:meth:`_sleep` for a task of a sync caller's private loop, whose thread may be a
        worker that the body it waits for needs: a hand-over the wait is stuck behind runs on
        a thread *helper* starts (a sync body must not run under a loop), looked for now and
        at each 0.5 s check (such a task is not nudged)."""
        latch = job.latch
        assert latch is not None  # made by claim before it waits
        while not latch.is_set():
            with self._graph_lock:
                stalled = self._stalled(job)
            hand_over = None if stalled is None else stalled.hand_over
            if hand_over is not None and hand_over.pending:
                assert stalled is not None
                await helper(hand_over.take_over, stalled.old)
            else:
                await latch.async_wait(_OWNER_CHECK)

    def _enter_wait(self, job: _Job, thread: ThreadId) -> tuple[Memo | None, _ThreadJobs | None]:
        """The wait-for graph's part of a wait for *job*: settle the cycle that waiting would
        close, if any, and record the edge. Returns the memo to take at once (``RERUN``: the
        caller is to run the body itself, see above), else None and the caller's entry (to
        :meth:`_leave_wait`)."""
        me: _ThreadJobs | None = None
        with self._graph_lock:
            if job.settlement is None:
                me = lookup(self._threads, thread)
                cycle = None if me is None else self._find_cycle(job, me)
                if cycle is not None:
                    self._settle(cycle)
                if (
                    job.settlement is None
                    and me is not None
                    and self._find_cycle(job, me, buried=True) is not None
                ):
                    # A fallback-less query on a cycle settled through fallbacks, whose
                    # owner still waits, through the cycle, for me (it may be me): its value
                    # comes from the settled ones, but only if someone computes it who is not
                    # stuck on the cycle. I do, unclaimed (docs/queries.md). Likewise if its
                    # owner runs, while it waits, a body I handed over: it cannot go on
                    # before I do.
                    # The old memo it verifies, if any, travels along: the caller verifies
                    # it too, so a cycle found green executes no body whoever closed it.
                    return Memo(RERUN, job.old, None, job.revision, job.revision, LOW), None
                if job.settlement is None:
                    if me is None:
                        me = self._threads[thread] = _ThreadJobs(thread)
                    me.waiting = job  # its chain reaches a running or settled job
        return None, me

    def _leave_wait(self, job: _Job, me: _ThreadJobs | None, waited: float) -> None:
        """Take the edge :meth:`_enter_wait` recorded out of the graph; count the wait."""
        with self._graph_lock:
            if me is not None:
                me.waiting = None
        with self._shard(job.slot):
            self._counts(job.slot, job.qkey[0]).wait += waited

    def _sleep(self, job: _Job, me: _ThreadJobs | None) -> float:
        """Wait for *job*'s latch; if its owner's process dies first, abandon it for them.
        Meanwhile run the hand-over the wait is stuck behind, if no worker has started it
        (see :meth:`_stalled`): returns the seconds that took (not waited)."""
        owner_pid, owner_ident = job.owner.thread
        latch = job.latch
        assert latch is not None  # made by claim before it waits
        sleeper = _Sleeper()
        if not latch.queue(sleeper):
            return 0.0
        ran = 0.0
        with self._graph_lock:  # before the first look: a hand-over made later nudges it
            self._sleepers.add(sleeper)
        record = None
        if self.watcher is not None:  # its owner holds it: a thread of this process, or none
            ((name, key),) = canonical_cycle([job.qkey])  # named as CycleError names it
            held = (owner_ident,) if owner_pid == os.getpid() and owner_ident > 0 else ()
            record = self.watcher.waiting(
                Awaited(f"query {name}({key!r})", held), functools.partial(_woken, sleeper)
            )
        try:
            while not sleeper.granted:
                if record is not None and record.error is not None:
                    raise record.error
                with self._graph_lock:
                    stalled = self._stalled(job)
                    if stalled is not None and me is not None:
                        me.taking = stalled
                if stalled is not None:
                    assert stalled.hand_over is not None
                    start = time.perf_counter()
                    try:
                        took = stalled.hand_over.take_over(stalled.old)
                    finally:
                        if me is not None:
                            with self._graph_lock:
                                me.taking = None
                    if took:
                        ran += time.perf_counter() - start
                        continue
                if not sleeper.sleep(_OWNER_CHECK) and not _alive(owner_pid):
                    self._abandon_dead(job)
        finally:
            if record is not None:
                self.watcher.done(record)  # type: ignore[union-attr]
            with self._graph_lock:
                self._sleepers.discard(sleeper)
            latch.withdraw(sleeper)
        return ran

    def _stalled(self, job: _Job) -> _Job | None:
        """The job with a hand-over that a wait for *job* may be stuck behind (graph_lock
        held): follow owner -> the job it waits for -> ... to an owner that waits for
        nothing; if that owner's innermost job is handed over (its task awaits a worker), it
        is needed by every job below it on that stack, the chain's included. Else None."""
        current = job
        seen: set[int] = set()
        while current.result is None:
            owner = current.owner
            waiting = owner.waiting
            if waiting is None:
                stack = owner.stack
                top = stack[-1:]  # read while its owner may run: a stale read finds nothing
                if top and top[0].hand_over is not None and current in stack:
                    return top[0]
                return None
            if id(owner) in seen:
                return None
            seen.add(id(owner))
            current = waiting
        return None

    def _nudge(self) -> None:
        """A task has handed a body over: the threads waiting in the table look again."""
        with self._graph_lock:
            sleepers = list(self._sleepers)
        for sleeper in sleepers:
            sleeper.nudge()

    def _abandon_dead(self, job: _Job) -> None:
        name, key = job.qkey
        error = WorkerCrashed(
            f"the worker process (pid {job.owner.thread[0]}) executing query {name}{key!r} "
            "died; nothing was memoized, so asking again executes it again"
        )
        shard = hash(job.slot) % _SHARDS
        with self._locks[shard]:
            if lookup(self._jobs[shard], job.slot) is not job:
                return  # published meanwhile
            del self._jobs[shard][job.slot]
            job.result = Memo(ERROR_ONCE, error, None, job.revision, job.revision)
        with self._graph_lock:
            self._threads.pop(job.owner.thread, None)
        assert job.latch is not None  # a waiter is here
        job.latch.set()

    def _find_cycle(self, job: _Job, me: _ThreadJobs, buried: bool = False) -> list[_Job] | None:
        """The jobs on the cycle that waiting for *job* would close, or None (graph_lock held).

        Follows owner -> the job that owner waits for -> its owner... back to *me*. The cycle is
        my frames from the job that the chain reaches, then each owner's frames from the job
        waited for up to its newest, in dependency order. A settled job ends the chain (its
        waiters go on), unless *buried* and the waiter that led to it runs a handed-over body
        meanwhile (``taking``): then the chain goes on from that body's job.
        """
        segments: list[list[_Job]] = []
        current = job
        seen: set[int] = set()
        waiter: _ThreadJobs | None = None
        while True:
            if current.settlement is not None:
                if not buried or waiter is None or waiter.taking is None:
                    return None  # settled: waiting for it ends at once
                current = waiter.taking
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
            waiter, current = owner, owner.waiting

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
            if job.settlement is not None:
                continue  # settled on a cycle found before (a re-run's reads meet it again)
            state: MemoState
            if self._fallbacks[job.qkey[0]]:
                state, value = FALLBACK, None
            else:
                state, value = ERROR, error
            old = job.old
            same = (
                old is not None
                and old.state is state
                and (state is FALLBACK or _same_cycle(old.value, error))
            )
            changed_at = old.changed_at if same and old is not None else job.revision
            memo = Memo(state, value, None, job.revision, changed_at, LOW)
            with self._shard(job.slot):
                job.settlement = job.result = memo
                if job.slot == job.qkey:
                    self.memos[job.qkey[0]][job.qkey[1]] = memo
                else:
                    self._scoped[job.slot] = memo
                if job.latch is not None:
                    job.latch.set()


def _same_cycle(value: Any, error: CycleError) -> bool:
    return isinstance(value, CycleError) and value.cycle == error.cycle
