"""The query runtime: one database's client of its job table, in one process.

It keeps the revision this process is in and each thread's state (``dualmode.query.hits``),
and brings a (query, key) up to date on a miss, in salsa's steps:

- **fetch** (:meth:`Runtime.fetch`): the thread's own copy of the memo, else one this process
  may read without a claim (:meth:`Runtime.fetch_hot`), else a claim
  (:meth:`Runtime.fetch_cold`): the table answers with a memo, or makes this thread the owner;
- **verify** (``dualmode.query.verify``): an owner given an older revision's memo checks what
  it read, in order; if nothing changed the memo is green and the body does not run;
- **execute** (``dualmode.query.execute``): otherwise the body runs, its reads recorded;
- **backdate** (``dualmode.query.backdate``): a result equal to the old one keeps the old
  "changed" revision, so what depends on it stays green;

and the owner publishes the memo, which wakes the threads waiting for it. What differs
between a table in this process and one in another is behind :class:`JobTable`. See
``docs/architecture.md#the-query-protocol``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Hashable, Iterable
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import Cancelled, WrongThreadError
from . import verify
from .backdate import backdate
from .execute import execute
from .hits import BoundQuery, Frame, ThreadState, unhashable
from .job_table import Claim, HitCounts, InProcessJobTable, JobTable, Verdict
from .memo import COUNTED_REVISIONS, Memo, MemoState
from .stats import DatabaseStats, QueryStats, RevisionStats
from .tasks import loop_here, no_loop_here

if TYPE_CHECKING:
    from .database import Database, _QueryDescriptor

__all__ = ["Runtime"]

T = TypeVar("T")
OK, ERROR, FALLBACK, ERROR_ONCE, EVICTED, RERUN = (
    MemoState.OK,
    MemoState.ERROR,
    MemoState.FALLBACK,
    MemoState.ERROR_ONCE,
    MemoState.EVICTED,
    MemoState.RERUN,
)
MEMO, STALE = Claim.MEMO, Claim.STALE  # globals: see dualmode.query.job_table
GREEN, EXECUTED, BACKDATED = Verdict.GREEN, Verdict.EXECUTED, Verdict.BACKDATED

# Chunks per worker for prefetch: more than par_map's default, because how long a key takes
# varies more (its dependencies may be done already, or a long chain), and a chunk left for
# one worker at the end idles the others. Chosen with benchmarks/bench_query.py.
_PREFETCH_CHUNKS_PER_WORKER = 16


class Runtime:
    """One database's queries in this process: thread states, revisions, and the miss path.

    *home*: the thread the database belongs to, for a database on a backend that is not
    parallel (serial): every other thread that uses it gets WrongThreadError, as serial
    primitives do. None: any thread may use it.
    """

    def __init__(
        self,
        db: Database,
        queries: list[_QueryDescriptor[Any]],
        inputs: frozenset[str],
        table: JobTable,
        revision: int = 1,
        home: int | None = None,
    ) -> None:
        self.db = db
        self.table = table
        self.queries = {q.name: q for q in queries}
        self.index = {q.name: i for i, q in enumerate(queries)}
        self.inputs = inputs
        self.lru = {q.name: q.lru for q in queries if q.lru is not None}
        table.attach(list(self.queries), self.unreported_hits, self.lru)
        self.memos = table.memos  # what threads may read without a claim
        self.scope = table.scope  # where local=True memos are kept
        self.home = home
        self.revision = revision  # the newest revision this process knows of
        self.revision_lock = threading.Lock()
        self.local = threading.local()  # .state: this thread's ThreadState
        self.reported: dict[int, list[int]] = {}  # hits reported, per id(thread state)
        self.states: list[ThreadState] = []  # kept after their threads end: stats count them
        self.states_lock = threading.Lock()
        self.retired_greens: dict[int, int] = {}  # per revision, of states retired

    # -- threads and revisions -----------------------------------------------------------------

    def thread(self) -> ThreadState:
        """This thread's state, in the current revision unless a body of an older one runs."""
        try:
            thread: ThreadState = self.local.state
        except AttributeError:
            thread = self._new_thread()
        self.install(thread)
        return thread

    def _new_thread(self) -> ThreadState:
        if self.home is not None and self.home != get_ident():
            raise WrongThreadError(
                f"{self.db!r} was created by thread {self.home} and used from thread "
                f"{get_ident()}: a database on the {self.db.backend.name} backend belongs to "
                "the thread that created it, as that backend's primitives do. Use it from that "
                "thread, or create it with a parallel backend (backend='threads') to share it"
            )
        thread = ThreadState(self, list(self.queries), self.revision)
        self.local.state = thread
        with self.states_lock:
            self.states.append(thread)
        return thread

    def install(self, thread: ThreadState) -> None:
        """Point this thread's bound queries at *thread*'s calls, in the current revision
        unless a body runs.

        Under the thread's lock, which :meth:`learn_revision` takes to reset them: either
        the reset comes after these stores, or this reads the new revision. (Checking the
        revision again after the stores, without a lock, is not enough: a thread's load may
        pass its own earlier stores, and the old revision's calls stored after the reset
        would serve stale values until the next revision.)"""
        with thread.lock:
            if not thread.stack and thread.revision != self.revision:
                thread.advance(self.revision, self.table.changes(thread.revision))
            thread.switch()

    def learn_revision(self, revision: int) -> None:
        """Move this process to *revision*: every thread's next hit takes the slow path (its
        bound queries are reset after the revision is published; see install). Returns once
        they are reset, also when another thread is resetting them for the same revision:
        the caller of ``db.source[k] = v`` may tell other threads that their next call sees
        the change (a thread that learned the revision from a stale claim could otherwise
        still be resetting them)."""
        with self.revision_lock:
            if revision <= self.revision:
                return
            self.revision = revision
            with self.states_lock:
                states = list(self.states)
            for thread in states:
                with thread.lock:
                    for bound in list(thread.bound):
                        bound._call = None

    def stale(self, thread: ThreadState, revision: int) -> None:
        """The table says *thread*'s revision is over: cancel its queries, or, between
        queries, move it to the current revision."""
        self.learn_revision(revision)
        if thread.stack:
            raise Cancelled(
                f"an input of {self.db!r} changed (revision {thread.revision} -> {revision}) "
                "while this query ran; ask again for the value from the new inputs"
            )
        self.install(thread)

    # -- fetch ---------------------------------------------------------------------------------

    def get(self, name: str, key: tuple[Any, ...], thread: ThreadState) -> Any:
        """``name(*key)`` when *thread*'s own copy of the memos lacks it."""
        memo = self.fetch(name, key, thread, mine=False)
        if memo.state is OK:
            return memo.value
        raise memo.value

    def fetch(
        self, name: str, key: tuple[Any, ...], thread: ThreadState, mine: bool = True
    ) -> Memo:
        """The memo of ``name(*key)`` in *thread*'s revision: found, verified, or executed
        (*mine*: look in the thread's own copy first). Raises Cancelled if an input changes
        while it is brought up to date inside a running query."""
        index = self.index[name]
        memos = thread.memos[index]
        if mine:
            memo = memos.get(key)
            if memo is None:
                memo = thread.take_carried(index, key)
            if memo is not None:
                return memo
        while True:
            found = self.fetch_hot(name, key, thread, index)
            if found is None:
                found = self.fetch_cold(name, key, thread)
            if found is not None:
                return self.keep(name, key, thread, memos, found)
            memos = thread.memos[index]  # a new revision: a new copy

    def keep(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadState,
        memos: dict[tuple[Any, ...], Memo],
        found: Memo,
    ) -> Memo:
        """*found*, the memo fetched for ``name(*key)``, kept in *memos*: *thread*'s copy of
        the revision it was fetched in, taken before the fetch (a body that ends after an
        input changed moves its thread on, and its value must not land in the new copy). A
        fallback's value is computed; an ERROR_ONCE is delivered, kept nowhere, and so is the
        result of a RERUN (:meth:`rerun`). A memo whose dependencies are unknown is never
        carried to a later revision (ThreadState.advance)."""
        if found.state is not OK:
            if found.state is RERUN:
                return self.rerun(self.queries[name], key, thread, found.value)
            if found.state is FALLBACK:
                found = self._fallback(self.queries[name], key, found)
            if found.state is ERROR_ONCE:
                return found  # delivered, kept nowhere
        memos[key] = found
        if found.deps is None:
            thread.unknown_deps.append((self.index[name], key))
        return found

    def fetch_hot(
        self, name: str, key: tuple[Any, ...], thread: ThreadState, index: int
    ) -> Memo | None:
        """The memo of ``name(*key)`` from the memos this process may read without a claim,
        if it is valid in the thread's revision (copied into the thread's own), else None."""
        memos = self.memos[name]
        if key not in memos:  # in and [], not .get: see dualmode.query.memo.lookup
            return None
        memo = memos[key]
        revision = thread.revision
        if memo.state is FALLBACK or memo.state is EVICTED:
            return None  # a claim computes the value
        if memo.verified_at != revision:
            if not self.table.unchanged((name, key), memo, revision):
                return None
            thread.greens += 1  # green: nothing it read changed since it was verified
        elif memo.deps is None:
            thread.unknown_deps.append((index, key))
        thread.hits[index] += 1
        thread.memos[index][key] = memo
        return memo

    def fetch_cold(self, name: str, key: tuple[Any, ...], thread: ThreadState) -> Memo | None:
        """Claim ``name(*key)``: the memo the table answers, or, as its owner, the memo this
        thread brought up to date (:meth:`_update`). None if the thread's revision was over:
        it has moved to the current one. An async query asked on a thread whose event loop
        runs raises LoopRunning rather than wait there (:meth:`_claim_on_loop`)."""
        descriptor = self.queries[name]
        scope = self.scope if descriptor.local else None
        if descriptor.is_async and loop_here():
            kind, answer = self._claim_on_loop(name, key, thread, scope)
        else:
            kind, answer = self.table.claim(name, key, thread.id, thread.revision, scope)
        if kind is MEMO:
            return answer  # type: ignore[no-any-return]
        if kind is STALE:
            self.stale(thread, answer)
            return None
        return self._update(descriptor, key, thread, scope, answer)  # RUN or VERIFY

    def _claim_on_loop(
        self, name: str, key: tuple[Any, ...], thread: ThreadState, scope: Hashable | None
    ) -> tuple[Claim, Any]:
        """Claim async query ``name(*key)`` for a sync call on a thread whose event loop
        runs. From plain code there, LoopRunning at once (the caller meant ``async_get``).
        Inside a body (a sync body a task handed to this thread, or a private loop's), the
        claim may answer at once (a memo, a cycle through this thread's own frames); a wait
        for an owner, which may be a task on this very loop, raises LoopRunning instead; and
        executing raises it in ``execute``. A table in another process is claimed from as
        usual: its owners are not on this loop."""
        refuse = functools.partial(no_loop_here, name)
        table = self.table
        if not isinstance(table, InProcessJobTable):
            return table.claim(name, key, thread.id, thread.revision, scope)
        if not thread.stack:
            refuse()
        return table.claim(name, key, thread.id, thread.revision, refuse=refuse)

    def _update(
        self,
        descriptor: _QueryDescriptor[Any],
        key: tuple[Any, ...],
        thread: ThreadState,
        scope: Hashable | None,
        old: Memo | None,
    ) -> Memo:
        """Bring a claimed (query, key) up to date in the thread's revision and publish it:
        verify *old*; if a dependency changed (or there is no old memo), execute the body and
        backdate the result. Abandons the claim if anything but the body raises (Cancelled,
        KeyboardInterrupt...)."""
        revision = thread.revision
        frame = Frame()
        thread.enter(frame)  # verification's reads are cancelled with a new revision too
        try:
            executed, green = self._verify_or_execute(descriptor, key, thread, frame, old)
        except BaseException:
            self.give_up(descriptor.name, key, thread, scope)
            raise
        thread.leave()
        return self.finish(descriptor, key, thread, scope, old, executed, revision, green)

    def _verify_or_execute(
        self,
        descriptor: _QueryDescriptor[Any],
        key: tuple[Any, ...],
        thread: ThreadState,
        frame: Frame,
        old: Memo | None,
    ) -> tuple[tuple[Memo, float, float] | None, bool]:
        """In *frame*, pushed: whether *old* is green (nothing it read changed), and None if
        it is and still holds its value, else the body executed (see ``execute``): an
        evicted value (``lru=``) is computed again even when green."""
        green = (
            old is not None and not descriptor.volatile and not verify.changed(self, old, thread)
        )
        if green and old is not None and old.state is not EVICTED:
            return None, True
        return execute(self, descriptor, key, thread, frame), green

    def give_up(
        self, name: str, key: tuple[Any, ...], thread: ThreadState, scope: Hashable | None
    ) -> None:
        """Pop the frame of *thread*'s claim of ``name(*key)`` and abandon the claim."""
        thread.leave()
        self.table.abandon(name, key, thread.id, scope)

    def finish(
        self,
        descriptor: _QueryDescriptor[Any],
        key: tuple[Any, ...],
        thread: ThreadState,
        scope: Hashable | None,
        old: Memo | None,
        executed: tuple[Memo, float, float] | None,
        revision: int,
        green: bool,
    ) -> Memo:
        """Publish *thread*'s claim of ``descriptor(*key)`` in *revision*, its frame popped:
        *old* found green (*executed* None), or what the body gave, backdated if equal to
        *old* or if *old* was *green* (nothing it read changed) but its value evicted."""
        name = descriptor.name
        if executed is None:
            assert old is not None
            memo = old.verified(revision)
            return self.table.publish(name, key, thread.id, memo, verdict=GREEN, scope=scope)
        memo, elapsed, self_time = executed
        verdict = backdate(old, memo, recomputed=green)
        store = memo.state is OK or descriptor.cache_errors
        if not store:
            memo = memo.replace(state=ERROR_ONCE)
        return self.table.publish(
            name,
            key,
            thread.id,
            memo,
            store=store,
            verdict=verdict,
            elapsed=elapsed,
            self_time=self_time,
            scope=scope,
        )

    def rerun(
        self,
        descriptor: _QueryDescriptor[Any],
        key: tuple[Any, ...],
        thread: ThreadState,
        old: Memo | None,
    ) -> Memo:
        """Bring ``descriptor(*key)`` up to date on *thread*, unclaimed: the table answered
        ``RERUN`` (the query is on a cycle settled through other queries' fallbacks, and its
        owner waits for this thread through the cycle), with *old*, the memo its owner
        verifies. Verified as the owner does (its reads find the settled values), else
        executed, it gives what the owner will publish. Its memo is kept nowhere; if a cycle
        settled the query meanwhile (its reads closed one through it), the settled memo is
        answered instead, as every other caller gets it."""
        frame = Frame()
        thread.enter(frame)
        try:
            executed, _ = self._verify_or_execute(descriptor, key, thread, frame, old)
        finally:
            thread.leave()
        if executed is None:
            assert old is not None
            memo = old.verified(thread.revision)
        else:
            memo = executed[0]
        scope = self.scope if descriptor.local else None
        settled = self.table.peek(descriptor.name, key, thread.revision, scope)
        if settled is None:
            return memo
        return self._fallback(descriptor, key, settled) if settled.state is FALLBACK else settled

    def _fallback(
        self, descriptor: _QueryDescriptor[Any], key: tuple[Any, ...], memo: Memo
    ) -> Memo:
        """The value of a query settled by its ``cycle=`` fallback (computed by each reader)."""
        assert descriptor.cycle is not None
        try:
            return memo.replace(state=OK, value=descriptor.cycle(self.db, *key))
        except Exception as exc:
            return memo.replace(state=ERROR, value=exc)

    # -- what bound queries offer besides calls -------------------------------------------------

    def peek(self, name: str, key: tuple[Any, ...]) -> Memo | None:
        """The memo of ``name(*key)`` if it is valid in this process's revision (nothing is
        computed; a fallback value is)."""
        descriptor = self.queries[name]
        scope = self.scope if descriptor.local else None
        memo = self.table.peek(name, key, self.revision, scope)
        if memo is not None and memo.state is FALLBACK:
            memo = self._fallback(descriptor, key, memo)
        return memo

    def peek_value(self, name: str, key: tuple[Any, ...], default: Any) -> Any:
        memo = self.peek(name, key)
        if memo is None or memo.state is ERROR_ONCE or memo.state is EVICTED:
            return default
        if memo.state is OK:
            return memo.value
        raise memo.value

    async def async_get(self, bound: BoundQuery[T], key: tuple[Any, ...]) -> T:
        """See :meth:`BoundQuery.async_get` (``dualmode.query.awaiting``)."""
        from .awaiting import async_get

        value: T = await async_get(self, bound._binding._name, key)
        return value

    def prefetch(self, name: str, keys: Iterable[Any]) -> None:
        """Compute every missing key of query *name* in parallel on the database's backend."""
        # Only keys with a memo verified in this revision, found here without a claim, are
        # left out: verifying the others is for the workers (a memo of an older revision may
        # need its dependencies brought up to date). The check costs the caller well under a
        # microsecond a key; without it, prefetching 10,000 keys all computed already took
        # ~90 ms on processes (a reservation and a memo sent back for each) where serial
        # takes a few.
        memos, revision = self.memos[name], self.revision
        wanted = []
        for k in keys:
            key = k if isinstance(k, tuple) else (k,)
            try:
                memoized = key in memos and memos[key].verified_at == revision  # memo.lookup
            except TypeError:
                raise unhashable(name, key) from None
            if not memoized:
                wanted.append(key)
        if wanted:
            from ..parallel import par_for_each

            backend = self.db.backend
            count = 1 if backend.runs_inline() else backend.workers * _PREFETCH_CHUNKS_PER_WORKER
            size = -(-len(wanted) // count)
            chunks = [wanted[i : i + size] for i in range(0, len(wanted), size)]
            chunk = functools.partial(_prefetch_chunk, self.db, name)
            par_for_each(chunk, chunks, chunksize=1, backend=backend)

    # -- statistics ----------------------------------------------------------------------------

    def _unreported(self, thread: ThreadState) -> HitCounts:
        """*thread*'s hits the table has not counted yet (served from its own caches)."""
        with self.states_lock:  # two callers must not both report the same hits
            totals = thread.all_hits()
            sent = self.reported.get(id(thread)) or [0] * len(totals)
            self.reported[id(thread)] = totals
        return [
            (thread.names[i], n - m)
            for i, (n, m) in enumerate(zip(totals, sent, strict=False))
            if n > m
        ]

    def retire(self, state: ThreadState) -> None:
        """Count the hits and greens of a state that is done (a task's: see
        ``dualmode.query.tasks``), which :meth:`stats` does not walk."""
        pending = self._unreported(state)
        with self.states_lock:
            self.reported.pop(id(state), None)
            greens = state.past_greens.copy()
            greens[state.revision] = greens.get(state.revision, 0) + state.greens
            oldest = self.revision - COUNTED_REVISIONS  # as the table counts verdicts
            retired = {r: n for r, n in self.retired_greens.items() if r >= oldest}
            for revision, n in greens.items():
                if revision >= oldest:
                    retired[revision] = retired.get(revision, 0) + n
            self.retired_greens = retired
        if pending:
            self.table.add_hits(pending)

    def unreported_hits(self) -> HitCounts:
        """The calling thread's hits the table has not counted yet (see JobTable.attach)."""
        return self._unreported(self.local.state)

    def stats(self) -> DatabaseStats:
        with self.states_lock:
            states = list(self.states)
        for thread in states:  # this process's uncounted hits reach the table first
            pending = self._unreported(thread)
            if pending:
                self.table.add_hits(pending)
        counts, verdicts = self.table.stats()
        queries = {name: QueryStats(*counts[name]) for name in self.index}
        with self.states_lock:
            retired = self.retired_greens.copy()
        # As the table counts: a thread that has not asked since keeps older revisions' greens.
        oldest = self.revision - COUNTED_REVISIONS
        for r, n in retired.items():
            if r >= oldest:
                verdicts.setdefault(r, dict.fromkeys(Verdict, 0))[GREEN] += n
        for thread in states:
            greens = thread.past_greens.copy()
            greens[thread.revision] = greens.get(thread.revision, 0) + thread.greens
            for r, n in greens.items():
                if n and r >= oldest:
                    verdicts.setdefault(r, dict.fromkeys(Verdict, 0))[GREEN] += n
        revisions = {
            r: RevisionStats(v[GREEN], v[EXECUTED] + v[BACKDATED], v[BACKDATED])
            for r, v in sorted(verdicts.items())
        }
        return DatabaseStats(queries, revisions, self.revision)


def _prefetch_chunk(db: Database, name: str, keys: list[tuple[Any, ...]]) -> None:
    """Bring *keys* of query *name* up to date, on one worker (see JobTable.prefetching)."""
    rt = db._runtime
    thread = rt.thread()
    scope = rt.scope if rt.queries[name].local else None
    with rt.table.prefetching(name, keys, thread.id, thread.revision, scope):
        for key in keys:
            _prefetch_one(db, name, key)


def _prefetch_one(db: Database, name: str, key: tuple[Any, ...]) -> None:
    rt = db._runtime
    while True:
        try:
            # Straight to the memo (no value: failures stay memoized for whoever asks).
            rt.fetch(name, key, rt.thread())
        except Cancelled:  # an input changed meanwhile: bring it up to date in the new one
            continue
        return
