"""The client of a query database's job table, in every process but the one that owns it.

The process that creates a database on the processes backend keeps its job table
(``.table_server.SharedJobTable``) and serves it to the others; each other process that
has the database holds a :class:`RemoteJobTable`, its implementation of the
:class:`dualmode.query.job_table.JobTable` protocol, whose requests go to the owner over this
thread's own connection (see "The query protocol" and "The processes backend: one module per
process role" in docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from multiprocessing import AuthenticationError, current_process
from multiprocessing.connection import Client, Connection
from typing import Any, cast

from dualmode.errors import WorkerCrashed
from dualmode.query.job_table import (
    Claim,
    HitCounts,
    InputCheck,
    InputState,
    JobTable,
    TableStats,
    Verdict,
)
from dualmode.query.lru import Recency
from dualmode.query.memo import LOW, Memo, MemoState, QKey, ThreadId, lookup

from .link import refused
from .packing import (
    MemoFields,
    cannot_travel,
    memo_fields,
    pack_entry,
    pack_value,
    packed_value,
    unpack_entry,
    unpack_fields,
    unpack_memo,
    unpack_value,
)
from .table_server import shared_table

__all__ = ["RemoteJobTable", "connect_job_table", "sync_job_tables"]

OK, ERROR_ONCE, RETRY, EVICTED, RERUN = (
    MemoState.OK,
    MemoState.ERROR_ONCE,
    MemoState.RETRY,
    MemoState.EVICTED,
    MemoState.RERUN,
)

# One-way requests sent together while a prefetch chunk runs (see RemoteJobTable._event): a
# message costs the two processes about as much as ten small publishes, and this bounds how
# long a result waits on its way (a few ms of bodies).
_BATCH = 64
_BATCH_SECONDS = 0.002  # nor longer than this, counted at the next event


class RemoteJobTable:
    """A query database's job table, kept by the process that created the database, as
    another process uses it.

    Every process that has the database asks the same table: claims, waits (with the
    wait-for-graph cycle check, done in the owner) and memos are shared by all of them, so
    each (query, key) executes once in the whole process tree. Values and exceptions travel
    as cloudpickle bytes (``.packing``). This client keeps this process's cache of the memos
    it has executed or received (its :attr:`memos`), keeps ``local=True`` values here (the
    table holds a marker for them), and sends the calling thread's hits that the table has
    not counted along with each claim.
    """

    shared = True

    def __init__(self, address: Any, ident: str, owner_pid: int) -> None:
        self._address = address
        self._ident = ident
        self._owner_pid = owner_pid
        self._link = _link_to(address, owner_pid)
        self._local = _ThreadState()
        # Input values fetched by prefetch_inputs: (their revision, {(name, key): answer}).
        # An input's value in a revision never changes, so any thread reads them in it.
        self._inputs: tuple[int, dict[tuple[str, Hashable], tuple[Any, ...]]] = (0, {})

    def __reduce__(self) -> tuple[Any, ...]:
        return connect_job_table, (self._address, self._ident, self._owner_pid)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._local.pending:
            self._flush()  # the owner runs them first: this request may depend on them
        return self._link.call(self._ident, method, args, kwargs)

    # -- one-way requests, batched while a prefetch chunk runs -------------------------------

    def _event(self, event: tuple[Any, ...]) -> None:
        """A one-way request: sent now, or, inside :meth:`prefetching`, with the next
        request, at the end of the chunk, or once ``_BATCH`` have gathered. A thread that
        is about to wait sends them first (every wait is a claim), so a batch never holds
        back a result that someone waits for while this thread waits too."""
        local = self._local
        pending = local.pending
        if not pending:
            local.since = time.monotonic()
        pending.append(event)
        if (
            not local.batching
            or len(pending) >= _BATCH
            or time.monotonic() - local.since > _BATCH_SECONDS
        ):
            self._flush()

    def _flush(self) -> None:
        events = self._local.pending
        self._local.pending = []
        self._link.send(self._ident, "events", (events,), {})

    def _reserve(
        self,
        name: str,
        keys: list[tuple[Any, ...]],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None,
    ) -> None:
        """Claim *keys* for this thread in one request (see ``SharedJobTable.reserve``);
        those given are this thread's reservations, to start when it comes to them."""
        answers, news = self._call(
            "reserve", name, keys, thread, revision, self._unreported(), scope
        )
        # Recorded before anything is loaded: a value that fails to load must not leave the
        # owner holding reservations this thread no longer knows of.
        reserved: dict[tuple[str, tuple[Any, ...]], tuple[int, Claim, Any]] = {}
        for key, answer in zip(keys, answers, strict=True):
            if answer is not None and answer[0] is not Claim.MEMO and answer[0] is not Claim.STALE:
                reserved[(name, key)] = (revision, answer[0], answer[1])
        self._local.reserved = reserved
        if news:
            self._learn(news)
        for key, answer in zip(keys, answers, strict=True):
            if answer is None:
                continue  # another thread's job
            kind, memo = answer
            if kind is Claim.MEMO and scope is not None:  # this process's value, re-stamped
                self._memos[name][key] = self._received(name, key, memo, scope, old=False)
            elif kind is Claim.MEMO:
                self._learn_one(name, key, memo_fields(memo, memo.value))
            elif kind is Claim.VERIFY and memo is not None:
                entry = (revision, kind, self._received(name, key, memo, scope, old=True))
                reserved[(name, key)] = entry

    @contextlib.contextmanager
    def prefetching(
        self,
        name: str,
        keys: list[tuple[Any, ...]],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> Iterator[None]:
        """See :meth:`JobTable.prefetching`: the chunk's keys are claimed in one request
        (reserved: see ``SharedJobTable.reserve``), each started without a round trip when
        the thread comes to it, and what the thread publishes goes in batches."""
        thread = self._link.thread_id()
        local = self._local
        if local.batching:
            # A prefetch inside a query of this thread's chunk (nested parallel calls run
            # inline in a worker): its keys are claimed one by one, the chunk's stay reserved.
            yield
            return
        local.batching = True
        local.scope = scope
        chunks = _chunk_tables()
        chunks.add(self)
        try:
            self._reserve(name, keys, thread, revision, scope)
            yield
        finally:
            chunks.discard(self)
            local.batching = False
            self._give_way(thread)
            hits = self._unreported()  # served from this process's caches since its last claim
            if hits:
                self._event(("hits", hits))

    def _release(self, thread: ThreadId) -> None:
        """Give up this thread's unstarted reservations (the started ones reported first:
        the owner must not give those up)."""
        self._report_started(thread)
        if self._local.reserved:
            self._local.reserved = {}
            self._event(("release", thread))

    def _report_started(self, thread: ThreadId) -> None:
        started = self._local.started
        if started:
            for name, key, scope in started:
                self._event(("start", thread, name, key, scope))
            started.clear()

    def _give_way(self, thread: ThreadId) -> None:
        """Send all that this thread holds back: its reservations and its batched events.
        Before the thread waits on another table (another database may be computed by the
        threads that wait for these), and at the end of a chunk."""
        self._release(thread)
        if self._local.pending:
            self._flush()

    # -- this process's side -------------------------------------------------------------------

    @property
    def memos(self) -> Mapping[str, dict[tuple[Any, ...], Memo]]:
        return self._memos

    @property
    def scope(self) -> Hashable:
        return os.getpid()

    def attach(
        self,
        queries: Iterable[str],
        unreported_hits: Callable[[], HitCounts],
        lru: Mapping[str, int] | None = None,
    ) -> None:
        self._memos: dict[str, dict[tuple[Any, ...], Memo]] = {name: {} for name in queries}
        self._unreported = unreported_hits
        # This process's cache keeps at most N values of an lru=N query (the owner's table
        # keeps its own N): the least recently cached are dropped, and fetched again.
        self._recency: dict[str, Recency[tuple[Any, ...]]] = {
            name: Recency(limit) for name, limit in (lru or {}).items()
        }

    def _cache(self, name: str, key: tuple[Any, ...], memo: Memo) -> None:
        """Keep *memo* in this process's cache, within its query's ``lru=`` bound."""
        memos = self._memos[name]
        memos[key] = memo
        recency = self._recency.get(name)
        if recency is not None:
            for victim in recency.use(key):
                # Replaced, not deleted: other threads read this dict with `in` then `[]`.
                dropped = lookup(memos, victim)
                if dropped is not None:
                    memos[victim] = dropped.evicted()

    def unchanged(self, qkey: QKey, memo: Memo, revision: int) -> bool:
        return False  # only the owner's table knows: ask it with a claim

    def changes(self, since: int) -> set[QKey] | None:
        return None  # likewise: this process's threads start each revision afresh

    def _received(
        self, name: str, key: tuple[Any, ...], memo: Memo, scope: Hashable | None, old: bool
    ) -> Memo:
        """A memo from the owner's table as this process uses it: unpacked and cached here (an
        *old* one, to be verified, is not cached); for a ``local=True`` query, the marker the
        table holds turned into this process's value."""
        if scope is not None and memo.state is OK:
            mine = lookup(self._memos[name], key)
            if mine is None:
                if old:  # another process executed it: execute it again here
                    return memo.replace(state=RETRY, deps=None)
                # Cannot happen: a local=True memo is published only after it was cached here.
                raise RuntimeError(f"query {name}{key!r}: its local=True value is lost")
            return mine.replace(verified_at=memo.verified_at, changed_at=memo.changed_at)
        if memo.state is RERUN:  # to bring up to date here, from the old memo it carries
            mine = (
                None if memo.value is None else self._received(name, key, memo.value, scope, True)
            )
            return memo.replace(value=None if mine is None or mine.state is RETRY else mine)
        memo = unpack_memo(memo)
        if memo.state is not ERROR_ONCE and not old:
            self._cache(name, key, memo)
        return memo

    # -- the protocol ----------------------------------------------------------------------------

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> tuple[Claim, Any]:
        thread = self._link.thread_id()
        reserved = self._local.reserved
        if reserved:
            mine = reserved.pop((name, key), None)
            if mine is not None:
                if mine[0] == revision:  # reserved for this thread: start it, no round trip
                    # The owner learns of it with its publish, or before this thread's next
                    # claim (which may wait, and the wait-for graph must see it running).
                    self._local.started.append((name, key, scope))
                    return mine[1], mine[2]
                reserved[(name, key)] = mine
                self._release(thread)  # reserved in an older revision: give them all up
        self._report_started(thread)  # this claim may wait: the wait-for graph must see them
        for other in list(_chunk_tables()):
            if other is not self:
                other._give_way(thread)
        kind, answer, news, settled, void = self._call(
            "claim", name, key, thread, revision, scope, self._unreported()
        )
        try:
            return self._claimed(
                name, key, thread, revision, scope, kind, answer, news, settled, void
            )
        except BaseException:
            if kind is Claim.RUN or kind is Claim.VERIFY:  # granted: give it back
                self._forget_started(name, key, scope)
                self._event(("abandon", name, key, thread, scope))
            raise

    def _claimed(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None,
        kind: Claim,
        answer: Any,
        news: list[Any],
        settled: list[Any],
        void: bool,
    ) -> tuple[Claim, Any]:
        """The rest of :meth:`claim`, once the owner has answered."""
        if void:  # the owner gave up this thread's reservations while it waited
            voided = self._local.reserved
            self._local.reserved = {}
            if voided and self._local.batching:
                # Still in the chunk: reserve what is left of it again, in one request.
                chunk_name = next(iter(voided))[0]
                keys = [k for _, k in voided]
                self._reserve(chunk_name, keys, thread, revision, self._local.scope)
        if news:
            self._learn(news)
        if settled:
            mine = self._local.settled
            for settled_name, settled_key, memo in settled:
                mine[(settled_name, settled_key)] = memo
        if kind is Claim.MEMO or kind is Claim.VERIFY:
            answer = self._received(name, key, answer, scope, old=kind is Claim.VERIFY)
        return kind, answer

    def _learn(self, news: list[Any]) -> None:
        """Cache the results the other processes published (sent along with a claim): a
        query that reads one of them finds it here, with no claim."""
        for _pid, entry in news:
            self._learn_one(*unpack_entry(entry))

    def _learn_one(self, name: str, key: tuple[Any, ...], fields: MemoFields) -> None:
        """Cache the memo of *fields*, a result valid in its revision, unless one as new is
        here. Only a hint: a value that does not load here is skipped (a claim of it says
        why)."""
        memos = self._memos[name]
        mine = lookup(memos, key)
        if mine is None or mine.verified_at < fields[3]:
            try:
                loaded = unpack_fields(fields)
            except Exception:
                return
            if loaded.state is not ERROR_ONCE:
                self._cache(name, key, loaded)

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
        thread = self._link.thread_id()
        if verdict is Verdict.GREEN:
            if scope is None:
                self._cache(name, key, memo)
            shipped = memo_fields(memo, None)  # the owner's table re-stamps the one it has
        else:
            if store and scope is not None:
                # The value stays here and the table gets a marker: threads of this process
                # that wait for it read it from here, so it is cached before it is published.
                self._memos[name][key] = memo
            try:
                value = packed_value(memo, keep_value=scope is None, by_reference=True)
            except TypeError as exc:  # it cannot travel: this caller gets the others' error
                memo = cannot_travel(memo, exc)
                value = packed_value(memo)
            shipped = memo_fields(memo, value)
        entry = pack_entry(name, key, shipped)  # the owner passes it on to the others as it is
        # One way: a settlement of this job would have come with one of this thread's claims
        # (only a claim of this thread waits while its jobs run, and cycles are settled then).
        self._forget_started(name, key, scope)
        self._event(("finish", thread, entry, store, verdict, elapsed, self_time, scope))
        settlement = self._local.settled.pop((name, key), None)
        if settlement is not None:  # a cycle through this query was settled meanwhile
            return self._received(name, key, settlement, scope, old=False)
        if store and verdict is not Verdict.GREEN:
            self._cache(name, key, memo)
        return memo

    def abandon(
        self, name: str, key: tuple[Any, ...], thread: ThreadId, scope: Hashable | None = None
    ) -> None:
        thread = self._link.thread_id()
        self._forget_started(name, key, scope)
        self._event(("abandon", name, key, thread, scope))
        self._local.settled.pop((name, key), None)

    def _forget_started(self, name: str, key: tuple[Any, ...], scope: Hashable | None) -> None:
        """A started reservation ends: its publish (or abandon) tells the owner it ran."""
        started = self._local.started
        if started and started[-1] == (name, key, scope):
            started.pop()

    def peek(
        self, name: str, key: tuple[Any, ...], revision: int, scope: Hashable | None = None
    ) -> Memo | None:
        memo = lookup(self._memos[name], key)
        if memo is not None and memo.verified_at == revision and memo.state is not EVICTED:
            return memo
        if scope is not None:  # a local=True value is here or nowhere
            return None
        memo = self._call("peek", name, key, revision)
        return None if memo is None else self._received(name, key, memo, None, old=False)

    def add_hits(self, hits: HitCounts) -> None:
        self._call("add_hits", hits)

    def stats(self) -> TableStats:
        return cast(TableStats, self._call("stats"))

    def set_input(self, name: str, key: Hashable, value: Any, durability: int = LOW) -> int:
        return cast(int, self._call("set_input", name, key, pack_value(value), durability))

    def get_input(
        self, name: str, key: Hashable, revision: int
    ) -> tuple[InputState, Any, int, int]:
        fetched, answers = self._inputs
        if fetched == revision:
            answer = lookup(answers, (name, key))
            if answer is not None:
                return answer
        return _loaded(self._call("get_input", name, key, revision))

    def prefetch_inputs(self, name: str, keys: list[Hashable], revision: int) -> None:
        """See :meth:`JobTable.prefetch_inputs`: one request for all of *keys*. Kept for
        *revision* only (replacing those of another); nothing is kept if it is over, and
        the reads then ask as usual (and learn so)."""
        answers = self._call("get_inputs", name, keys, revision)
        if any(answer[0] is InputState.STALE for answer in answers):
            return
        fetched, kept = self._inputs
        kept = dict(kept) if fetched == revision else {}
        for key, answer in zip(keys, answers, strict=True):
            kept[(name, key)] = _loaded(answer)
        self._inputs = (revision, kept)

    def input_changes(
        self, inputs: list[tuple[str, Hashable]], since: int, revision: int
    ) -> tuple[InputCheck, int]:
        return cast(tuple[InputCheck, int], self._call("input_changes", inputs, since, revision))


def connect_job_table(address: Any, ident: str, owner_pid: int) -> JobTable:
    """Unpickle a job table: the owner's own table in the owner, a client elsewhere.

    A module-level function, not a classmethod: cloudpickle pickles a classmethod's function
    by value (its qualified name finds a bound method, not the function), and every task a
    worker unpickled then made a new function, which free-threaded 3.13 keeps forever
    (it makes functions immortal once a second thread has started)."""
    if owner_pid == os.getpid():
        table = shared_table(ident)
        if table is not None:
            return table
    return RemoteJobTable(address, ident, owner_pid)


def _loaded(answer: tuple[InputState, Any, int, int]) -> tuple[InputState, Any, int, int]:
    """A ``get_input`` answer from the owner, its value unpacked."""
    state, value, changed_at, durability = answer
    if state is InputState.SET:
        value = unpack_value(value)
    return state, value, changed_at, durability


class _ThreadState(threading.local):
    """A client's state in one thread (``threading.local`` runs ``__init__`` once in each)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []  # one-way requests not sent yet (_event)
        self.since = 0.0  # when the oldest of them was made
        self.batching = False  # inside a prefetch chunk (prefetching)
        self.scope: Hashable | None = None  # the chunk's query's scope (see claim)
        # This thread's reservations (_reserve) and those it started but has not reported.
        self.reserved: dict[tuple[str, tuple[Any, ...]], tuple[int, Claim, Any]] = {}
        self.started: list[tuple[str, tuple[Any, ...], Hashable | None]] = []
        # Its jobs that a cycle settled while they ran, as the table said in its claim
        # replies: their settlement replaces what their bodies give.
        self.settled: dict[tuple[str, tuple[Any, ...]], Memo] = {}


class _TableLink:
    """This process's connections to one process that serves job tables: one per thread,
    since a server thread runs one client thread's requests in order (a claim that waits
    holds its connection)."""

    def __init__(self, address: Any, owner_pid: int) -> None:
        self.address = address
        self.owner_pid = owner_pid
        self._tls = threading.local()

    def call(self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Pickled before the connection is touched: a key that does not pickle leaves it usable.
        request = pickle.dumps((ident, method, args, kwargs), pickle.HIGHEST_PROTOCOL)
        conn = self._connection()
        try:
            conn.send_bytes(request)
            reply = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._tls.conn = None
            raise self._gone(exc) from exc
        except BaseException:
            self._tls.conn = None  # interrupted mid-exchange: the stream is out of step
            conn.close()
            raise
        ok, value = pickle.loads(reply)
        if ok:
            return value
        raise value

    def thread_id(self) -> ThreadId:
        """The calling thread as the owner's table knows it: (pid, a number no other thread of
        this process had). Not the thread identifier, which Linux reuses at once: a new
        thread's requests could then run on the server thread still finishing an ended
        one's, and the two would share one stack in the table."""
        tid: ThreadId | None = getattr(self._tls, "tid", None)
        if tid is None:
            with _links_lock:
                tid = self._tls.tid = (os.getpid(), next(_thread_serials))
        return tid

    def send(self, ident: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A one-way request: sent, not waited for (the server runs a thread's requests in
        order, so this one is done before the thread's next request is looked at)."""
        request = pickle.dumps((ident, method, args, kwargs), pickle.HIGHEST_PROTOCOL)
        conn = self._connection()
        try:
            conn.send_bytes(request)
        except OSError as exc:
            self._tls.conn = None
            raise self._gone(exc) from exc
        self._tls.unsynced = ident

    def sync(self) -> None:
        """Wait until the server has run this thread's one-way requests."""
        ident = getattr(self._tls, "unsynced", None)
        if ident is not None:
            self._tls.unsynced = None
            self.call(ident, "sync", (), {})

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._tls, "conn", None)
        if conn is None:
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=current_process().authkey)
            except (OSError, EOFError) as exc:
                raise self._gone(exc) from exc
            except AuthenticationError as exc:
                raise refused(f"the job table of a database of process {self.owner_pid}") from exc
            self._tls.conn = conn
        return conn

    def _gone(self, exc: BaseException) -> WorkerCrashed:
        return WorkerCrashed(
            f"the process that created this database (pid {self.owner_pid}) and keeps its "
            f"job table cannot be reached ({type(exc).__name__}: {exc}): it has exited or "
            "crashed; a database on the processes backend lives as long as that process"
        )


_links: dict[Any, _TableLink] = {}
_thread_serials = itertools.count(1)
_links_lock = threading.Lock()


def _link_to(address: Any, owner_pid: int) -> _TableLink:
    with _links_lock:
        link = _links.get(address)
        if link is None:
            link = _links[address] = _TableLink(address, owner_pid)
        return link


_chunks = threading.local()


def _chunk_tables() -> set[RemoteJobTable]:
    """The tables whose prefetch chunk this thread is in (see RemoteJobTable._give_way)."""
    try:
        tables: set[RemoteJobTable] = _chunks.tables
    except AttributeError:
        tables = _chunks.tables = set()
    return tables


def sync_job_tables() -> None:
    """Wait until the owners of the databases this thread used have run its one-way
    requests (its publishes): called by a pool worker before it returns a task's result, so
    that what the task computed is in the owner's table when the caller sees it done."""
    with _links_lock:
        links = list(_links.values())
    for link in links:
        link.sync()


def _forget_links_after_fork() -> None:
    global _links_lock
    _links.clear()  # a forked child shares no connection of its parent's
    _links_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_links_after_fork)
