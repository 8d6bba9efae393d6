"""The job tables a process owns, and how it serves them to the other processes.

On the processes backend a database's job table lives in the process that created the
database, its *owner*: a :class:`SharedJobTable`, the engine's in-process table. Threads of the
owner claim, publish and find memos there with no round trip, exactly as on threads, so a
program that computes its queries in one process pays nothing for the backend. When the
database first travels (pickled for a worker), the owner starts serving its tables: a
listener (``multiprocessing.connection``, a Unix socket authenticated with the owner's
authkey, which every process started from it inherits) and one server thread per connected
client thread. The server thread runs the client's requests on the table; a claim that must
wait waits there, in the owner, as a thread of the owner would, so single-flight claims, the
wait-for graph and cycle settlement are the table's own. Values cross as cloudpickle bytes
(``.packing``) and are objects in the owner's table. The client is ``.job_table``. See
docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Hashable, Iterable
from multiprocessing import AuthenticationError, current_process
from multiprocessing.connection import Connection, Listener
from typing import Any

from dualmode.query.job_table import (
    _SHARDS,
    Claim,
    HitCounts,
    InProcessJobTable,
    InputState,
    Verdict,
    _Job,
    _ThreadJobs,
)
from dualmode.query.memo import LOW, Memo, MemoState, QKey, ThreadId, lookup

from .packing import (
    check_travels,
    memo_fields,
    pack_entry,
    pack_memo,
    pack_memo_or_error,
    pack_value,
    unpack_entry,
    unpack_fields,
    unpack_value,
)

__all__ = ["SharedJobTable", "shared_table"]

MEMO, RUN, VERIFY, STALE = Claim.MEMO, Claim.RUN, Claim.VERIFY, Claim.STALE
SET = InputState.SET
OK, ERROR, RETRY = MemoState.OK, MemoState.ERROR, MemoState.RETRY
GREEN, EXECUTED, BACKDATED = Verdict.GREEN, Verdict.EXECUTED, Verdict.BACKDATED
_NEWS_VERDICTS = (EXECUTED, BACKDATED)
_NEWS_STATES = (OK, ERROR)

# A result is passed on to every client with their next claim if its entry (key, what it
# read and its value, packed) is at most this many bytes: a worker then finds most of what
# the others computed without asking. A larger one is sent only to a client that asks for it
# (it may never need it).
NEWS_MAX_BYTES = 4096

# (pid of the publishing process, its entry: ``pack_entry(name, key, fields)``). Bytes, as
# the publishing client packed them: the owner keeps and forwards them as they came, and
# bytes are nothing for its garbage collector to walk.
News = tuple[int, bytes]
# The owner's own results wait in the news as (name, key, memo) until a client is sent them
# (news_since packs them then): packing each as it was published cost the owner as much as
# the rest of its publish (a report asked after a parallel run publishes thousands, and
# often no client asks again).
_Unpacked = tuple[str, tuple[Any, ...], Memo]
# What SharedJobTable._record_edges defers: its arguments.
_Edges = tuple[ThreadId, QKey, tuple[QKey, ...], tuple[QKey, ...]]


class SharedJobTable(InProcessJobTable):
    """A database's job table in the process that created it, shared with other processes.

    The owner's threads use it as the in-process table it is. Two things differ: its values
    must be able to travel (a value that cannot becomes the TypeError every process would
    get, :func:`~.packing.check_travels`), and ``local=True`` memos are kept per process (its
    :attr:`scope` is this process). Pickled, it becomes a client of this table
    (``.job_table.RemoteJobTable``) in the process that loads it.
    """

    shared = True

    def __init__(self, fallbacks: dict[str, bool], volatile: Iterable[str] = ()) -> None:
        super().__init__(fallbacks, volatile)
        self.owner_pid = os.getpid()
        self.scope = self.owner_pid  # local=True memos are kept per process
        self.ident = f"{self.owner_pid}-{next(_idents)}"
        # Once served: the results of the current revision, packed, in the order published,
        # for the server threads to pass on to every client (see _claim). A new list per
        # revision: a memo of an older one is of no use to a client without a claim.
        self.news: list[tuple[int, bytes | _Unpacked | None]] | None = None
        # Per client thread, how much of the news it has had: (the list's generation, length).
        # A generation, not the list: an old revision's list must not stay alive here.
        self._news_generation = 0
        self._news_seen: dict[ThreadId, tuple[int, int]] = {}
        # Per client thread, the jobs it reserved (claimed for a prefetch chunk in one
        # request) and has not started yet: not on its stack, so the wait-for graph sees no
        # edge through them. Only that thread's server thread uses its entry.
        self._reserved: dict[ThreadId, dict[Any, _Job]] = {}
        self._voided: set[ThreadId] = set()  # reservations given up while waiting: say so
        # Per shard (appended under its lock): the edges of results published by other
        # processes, added to the dependents graph at the next set_input. The server threads
        # that publish them compete with the workers for the CPU during a parallel
        # computation; the graph is needed only once an input changes.
        self._deferred: list[list[_Edges]] = [[] for _ in range(_SHARDS)]
        # Likewise per shard, for results that took publish_reserved: per query, the keys,
        # whose edges set_input reads from their memos. A key is kept alive by its memo
        # already: nothing new for the garbage collector to walk (a tuple per result was).
        self._deferred_keys: list[dict[str, list[tuple[Any, ...]]]] = [{} for _ in range(_SHARDS)]

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
        if scope is None and verdict is not GREEN and thread[0] == self.owner_pid:
            memo = check_travels(memo)  # a client packed its own: see RemoteJobTable.publish
        return self.publish_packed(
            name,
            key,
            thread,
            memo,
            None,
            store=store,
            verdict=verdict,
            elapsed=elapsed,
            self_time=self_time,
            scope=scope,
        )

    def _record_edges(
        self, thread: ThreadId, qkey: QKey, deps: tuple[QKey, ...], known: tuple[QKey, ...]
    ) -> None:
        """A result of another process: its edges wait for the next set_input. Appended
        under the shard's lock, before publish reads the revision: a set_input either takes
        them (it takes every shard's lock after it moved the revision, before it marks), or
        has moved the revision by then, and publish marks the result dirty itself."""
        if thread[0] == self.owner_pid:
            super()._record_edges(thread, qkey, deps, known)
            return
        shard = hash(qkey) % _SHARDS
        with self._locks[shard]:
            self._deferred[shard].append((thread, qkey, deps, known))

    def _take_deferred_edges(self) -> None:
        for shard, lock in enumerate(self._locks):
            with lock:
                deferred, self._deferred[shard] = self._deferred[shard], []
                keys, self._deferred_keys[shard] = self._deferred_keys[shard], {}
            for edges in deferred:
                super()._record_edges(*edges)
            for name, published in keys.items():
                memos = self.memos[name]
                for key in published:
                    # The memo publish_reserved stored, or one stored since (in this revision:
                    # set_input takes these before a new one starts), with its own edges.
                    memo = lookup(memos, key)
                    if memo is not None and memo.deps:
                        self._add_dependents((name, key), memo.deps)

    def publish_reserved(
        self,
        thread: ThreadId,
        name: str,
        key: tuple[Any, ...],
        memo: Memo,
        packed: bytes,
        elapsed: float,
        self_time: float,
    ) -> bool:
        """The hot path of a client's ``finish``: *memo*, executed by *thread* for a key
        it reserved and did not report started, stored and passed on as news as
        :meth:`publish_packed` would, with less work per result (a prefetch chunk publishes
        one per key). False, having changed nothing, where the general path must run: the
        job is not an unstarted reservation of *thread*, or a cycle settled it.

        Only *thread*'s server thread uses its reservations, so taking the job from them
        needs no lock. The ordering with ``set_input`` is publish's (docs/backends.md#why-
        this-is-safe, "edges added late are never missed"): the key is deferred and the memo
        stored under the shard's lock, and the revision is read after."""
        reserved = self._reserved.get(thread)
        slot = (name, key)
        job = None if not reserved else reserved.pop(slot, None)
        if job is None:
            return False
        if job.settlement is not None:
            reserved[slot] = job  # type: ignore[index]
            return False
        news = self.news
        revision = job.revision
        shard = hash(slot) % _SHARDS
        with self._locks[shard]:
            if memo.deps:
                pending = self._deferred_keys[shard]
                published = lookup(pending, name)
                if published is None:
                    published = pending[name] = []
                published.append(key)
            counters = self._counters[shard][name]
            counters.executions += 1
            counters.total += elapsed
            counters.self_time += self_time
            self._count(shard, revision, EXECUTED)
            self.memos[name][key] = memo
            job.result = memo
            del self._jobs[shard][slot]
            latch = job.latch
        if latch is not None:
            latch.set()
        if self.revision != revision:
            self._mark_dirty(job.qkey, self.revision)  # as publish does
        elif (
            news is not None
            and memo.state in _NEWS_STATES
            and memo.verified_at == revision
            and len(packed) <= NEWS_MAX_BYTES
        ):
            news.append((thread[0], packed))
        return True

    def publish_packed(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        memo: Memo,
        packed: bytes | None,
        **options: Any,
    ) -> Memo:
        """:meth:`publish`; *packed*: the entry a client sent (:func:`~.packing.pack_entry`),
        passed on as news as it is (None: packed here when there is news to give)."""
        news = self.news
        revision = self.revision
        in_force = super().publish(name, key, thread, memo, **options)
        if (
            news is not None
            and options.get("store", True)
            and options.get("scope") is None
            and options.get("verdict", EXECUTED) in _NEWS_VERDICTS
            and in_force.state in _NEWS_STATES
            and in_force.verified_at == revision
        ):
            if packed is None or in_force is not memo:
                news.append((thread[0], (name, key, in_force)))  # packed when sent
            elif len(packed) <= NEWS_MAX_BYTES:
                news.append((thread[0], packed))
        return in_force

    def serve_news(self) -> None:
        """Start keeping news (the table is served)."""
        if self.news is None:
            self.news = []

    def set_input(self, name: str, key: Hashable, value: Any, durability: int = LOW) -> int:
        revision = super().set_input(name, key, value, durability)
        if self.news is not None:
            self.news = []  # the old revision's results are verified again by claims
            self._news_generation += 1
        return revision

    def news_since(self, thread: ThreadId) -> list[News]:
        """The results published since *thread*'s last call, but its own process's (called
        by the server thread of that client thread only)."""
        news = self.news
        if news is None:
            return []
        generation = self._news_generation
        seen, done = self._news_seen.get(thread, (generation, 0))
        if seen != generation:
            done = 0  # a new revision's list
        end = len(news)
        self._news_seen[thread] = (generation, end)
        pid = thread[0]
        sent: list[News] = []
        for i in range(done, end):
            publisher, entry = news[i]
            if publisher == pid:
                continue
            if isinstance(entry, tuple):  # packed once, by whichever server thread comes first
                entry = _packed_news(*entry)
                news[i] = (publisher, entry)
            if entry is not None:
                sent.append((publisher, entry))
        return sent

    # -- reservations: a prefetch chunk claimed in one request --------------------------------

    def reserve(
        self,
        name: str,
        keys: list[tuple[Any, ...]],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> list[tuple[Claim, Any] | None]:
        """Claim each of *keys* for *thread* without starting it: per key, ``(MEMO, memo)``
        if a memo is valid in *revision*, ``(RUN, None)`` or ``(VERIFY, old memo)`` if it is
        now reserved for *thread*, None if another thread has its job. All ``(STALE, r)``
        when *revision* is over.

        The thread starts a reserved key with :meth:`start_reserved` (it is then an ordinary
        claim, on its stack) and gives up the rest with :meth:`release_reservations`; a
        claim of its that is about to wait gives them up first (:meth:`_before_wait`), so
        that no thread waits for a job whose owner waits too and has not started it. A
        claim by another thread of a reserved key waits for it as for any job. *scope*: as
        for :meth:`claim` (a ``local=True`` query's keys, kept per process).
        """
        if revision != self.revision:
            return [(STALE, self.revision)] * len(keys)
        owner = lookup(self._threads, thread)
        if owner is None:
            owner = self._threads[thread] = _ThreadJobs(thread)
        reserved = self._reserved.setdefault(thread, {})
        memos = self.memos[name] if scope is None else self._scoped
        answers: list[tuple[Claim, Any] | None] = []
        for key in keys:
            qkey = (name, key)
            slot = qkey if scope is None else (name, key, scope)
            memo_key = key if scope is None else slot
            shard = hash(slot) % _SHARDS
            counters = self._counters[shard][name]
            with self._locks[shard]:
                memo = lookup(memos, memo_key)
                if memo is not None:
                    valid = self._valid(memo, qkey, revision, shard, memos, memo_key)
                    if valid is not None:  # counted as a hit where it is read, in the client
                        answers.append((MEMO, valid))
                        continue
                jobs = self._jobs[shard]
                if lookup(jobs, slot) is not None:
                    answers.append(None)
                    continue
                counters.misses += 1
                job = jobs[slot] = _Job(qkey, slot, owner, revision, memo)
                reserved[slot] = job
                answers.append((RUN, None) if memo is None else (VERIFY, memo))
        return answers

    def start_reserved(
        self,
        thread: ThreadId,
        name: str,
        key: tuple[Any, ...],
        scope: Hashable | None = None,
        only_if_reserved: bool = False,
    ) -> None:
        """*thread* started its reserved ``name(*key)`` (of *scope*, see :meth:`reserve`):
        from now on an ordinary claim, on its stack. (A client says so only before it claims,
        or with the publish: see ``RemoteJobTable.claim``; *only_if_reserved* for the
        latter, which may follow.)"""
        reserved = self._reserved.get(thread)
        slot = (name, key) if scope is None else (name, key, scope)
        job = None if reserved is None else reserved.pop(slot, None)
        if job is None:
            if only_if_reserved:
                return
            raise RuntimeError(f"{name}{key!r} is not reserved for thread {thread}")
        self._threads[thread].stack.append(job)

    def release_reservations(self, thread: ThreadId) -> bool:
        """Give up *thread*'s reserved jobs that it has not started: their waiters claim
        again. Whether there were any."""
        reserved = self._reserved.get(thread)
        if not reserved:
            return False
        jobs = list(reserved.values())
        reserved.clear()
        for job in jobs:
            shard = hash(job.slot) % _SHARDS
            with self._locks[shard]:
                if lookup(self._jobs[shard], job.slot) is job:
                    del self._jobs[shard][job.slot]
                job.result = Memo(RETRY, None)
                latch = job.latch
            if latch is not None:
                latch.set()
        return True

    def _before_wait(self, thread: ThreadId) -> None:
        if self.release_reservations(thread):
            self._voided.add(thread)

    def voided(self, thread: ThreadId) -> bool:
        """Whether *thread*'s reservations were given up since it was last told."""
        if thread in self._voided:
            self._voided.discard(thread)
            return True
        return False

    def settled_on_stack(self, thread: ThreadId) -> list[tuple[str, tuple[Any, ...], Memo]]:
        """The jobs of *thread* that a cycle settled while they ran (called by the server
        thread of that client thread, the only writer of its stack)."""
        owner = lookup(self._threads, thread)
        if owner is None:
            return []
        return [
            (job.qkey[0], job.qkey[1], job.settlement)
            for job in owner.stack
            if job.settlement is not None
        ]

    def peek(
        self, name: str, key: tuple[Any, ...], revision: int, scope: Hashable | None = None
    ) -> Memo | None:
        if scope is None:
            return super().peek(name, key, revision)
        memo = lookup(self._scoped, (name, key, scope))
        return memo if memo is not None and memo.verified_at == revision else None

    def __reduce__(self) -> tuple[Any, ...]:
        address = _serve(self)
        from .job_table import connect_job_table  # that module imports this one

        return connect_job_table, (address, self.ident, self.owner_pid)


def _packed_news(name: str, key: tuple[Any, ...], memo: Memo) -> bytes | None:
    """The owner's result as news (see ``_Unpacked``): None if it cannot travel (its readers
    get the error when they claim it) or is larger than ``NEWS_MAX_BYTES``."""
    try:
        fields = pack_memo(memo)
    except TypeError:
        return None
    packed = pack_entry(name, key, memo_fields(fields, fields.value))
    return packed if len(packed) <= NEWS_MAX_BYTES else None


def shared_table(ident: str) -> SharedJobTable | None:
    """This process's own table *ident*, if it still exists."""
    return _tables.get(ident)


# -- serving ---------------------------------------------------------------------------------

_idents = itertools.count(1)
_tables: weakref.WeakValueDictionary[str, SharedJobTable] = weakref.WeakValueDictionary()
_lock = threading.Lock()
_listener: Listener | None = None


def _serve(table: SharedJobTable) -> Any:
    """Serve *table* to other processes; the address they connect to (the server starts on
    the first table served)."""
    global _listener
    with _lock:
        _tables[table.ident] = table
        table.serve_news()
        if _listener is None:
            _listener = Listener(family="AF_UNIX", authkey=current_process().authkey)
            threading.Thread(
                target=_accept, args=(_listener,), name="dualmode-table-server", daemon=True
            ).start()
        return _listener.address


def _forget_after_fork() -> None:
    """A forked child serves nothing of its parent's (it starts its own server if needed)."""
    global _listener, _lock
    _listener = None
    _lock = threading.Lock()
    _tables.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _accept(listener: Listener) -> None:
    """Accept clients for as long as this process lives. A connection that fails while it
    is being accepted fails alone: a worker killed during the handshake (a broken pool
    terminates its workers) must not stop the server, or every later client would wait
    in its handshake for ever (issue 11's A9 test caught exactly that)."""
    served = itertools.count(1)
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, ConnectionError):
            continue  # refused (not started from this process), or gone mid-handshake
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EINVAL):
                return  # the listener itself is closed (after os.fork, say)
            time.sleep(0.01)  # out of file descriptors, say: try again, not in a busy loop
            continue
        threading.Thread(
            target=_serve_client,
            args=(conn,),
            name=f"dualmode-table-client-{next(served)}",
            daemon=True,
        ).start()


def _serve_client(conn: Connection) -> None:
    """Run one client thread's requests, in order, until it disconnects. A one-way request
    (``_ONE_WAY``) gets no reply: the client goes on while it runs here."""
    with conn:
        while True:
            try:
                request = conn.recv_bytes()
            except (EOFError, OSError):
                return
            method = "?"
            try:
                ident, method, args, kwargs = pickle.loads(request)
                table = _tables.get(ident)
                if table is None:
                    raise ReferenceError(
                        "the database of this job table was dropped by the process that "
                        f"created it (pid {os.getpid()}): keep the database alive while other "
                        "processes use it"
                    )
                reply: tuple[bool, Any] = (True, _REQUESTS[method](table, *args, **kwargs))
            except Exception as exc:
                reply = (False, exc)
            if method in _ONE_WAY:
                if not reply[0]:
                    _report_one_way_failure(method, reply[1])
                continue
            try:
                data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an exception that does not pickle: say what it was
                data = pickle.dumps((False, RuntimeError(f"{reply[1]!r} ({exc})")))
            try:
                conn.send_bytes(data)
            except OSError:
                return


def _report_one_way_failure(method: str, exc: BaseException) -> None:
    # Nobody waits for a one-way request's reply; a failure there is a bug in dualmode.
    import traceback

    print(
        f"dualmode: a job table's {method!r} request from another process failed here "
        f"(pid {os.getpid()}); please report it:",
        file=sys.stderr,
    )
    traceback.print_exception(exc, file=sys.stderr)


# What clients may ask, with their values packed: each runs the table's method of that name.
# A claim's reply also carries the news (results of the others, SharedJobTable.news_since)
# and the settlements of the client thread's running jobs (so that its publish needs no reply).


def _claim(
    table: SharedJobTable,
    name: str,
    key: tuple[Any, ...],
    thread: ThreadId,
    revision: int,
    scope: Hashable | None,
    hits: HitCounts,
) -> tuple[Claim, Any, list[News], list[tuple[str, tuple[Any, ...], Memo]], bool]:
    kind, answer = table.claim(name, key, thread, revision, scope, hits)
    if kind is MEMO or kind is VERIFY:
        answer = pack_memo_or_error(answer, keep_value=scope is None)
    settled = [(n, k, pack_memo_or_error(memo)) for n, k, memo in table.settled_on_stack(thread)]
    return kind, answer, table.news_since(thread), settled, table.voided(thread)


def _reserve(
    table: SharedJobTable,
    name: str,
    keys: list[tuple[Any, ...]],
    thread: ThreadId,
    revision: int,
    hits: HitCounts,
    scope: Hashable | None = None,
) -> tuple[list[tuple[Claim, Any] | None], list[News]]:
    if hits:
        table.add_hits(hits)
    packed = [
        answer
        if answer is None or answer[0] is STALE or answer[0] is RUN
        else (answer[0], pack_memo_or_error(answer[1], keep_value=scope is None))
        for answer in table.reserve(name, keys, thread, revision, scope)
    ]
    return packed, table.news_since(thread)


def _events(table: SharedJobTable, events: list[tuple[Any, ...]]) -> None:
    """A client thread's one-way requests, in the order it made them (see
    RemoteJobTable._event): started reservations, publishes, abandons, releases."""
    for event in events:
        kind = event[0]
        if kind == "finish":
            _, thread, entry, store, verdict, elapsed, self_time, scope = event
            _finish(
                table,
                thread,
                entry,
                store=store,
                verdict=verdict,
                elapsed=elapsed,
                self_time=self_time,
                scope=scope,
            )
        elif kind == "start":
            table.start_reserved(*event[1:])
        elif kind == "hits":
            table.add_hits(event[1])
        elif kind == "abandon":
            name, key, thread, scope = event[1:]
            table.start_reserved(thread, name, key, scope, only_if_reserved=True)
            table.abandon(name, key, thread, scope)
        else:  # "release"
            table.release_reservations(*event[1:])


def _finish(
    table: SharedJobTable,
    thread: ThreadId,
    entry: bytes,
    *,
    store: bool,
    verdict: Verdict | None,
    elapsed: float,
    self_time: float,
    scope: Hashable | None,
) -> None:
    packed: bytes | None = entry
    name, key, fields = unpack_entry(entry)
    try:
        memo = unpack_fields(fields)
    except Exception as exc:  # the owner cannot load what a worker computed
        memo = Memo(ERROR, _unloadable(name, key, exc), *fields[2:])
        packed = None
    else:
        if (
            verdict is EXECUTED
            and store
            and scope is None
            and table.publish_reserved(thread, name, key, memo, entry, elapsed, self_time)
        ):
            return
    table.start_reserved(thread, name, key, scope, only_if_reserved=True)
    table.publish_packed(
        name,
        key,
        thread,
        memo,
        packed,
        store=store,
        verdict=verdict,
        elapsed=elapsed,
        self_time=self_time,
        scope=scope,
    )


def _peek(table: SharedJobTable, name: str, key: tuple[Any, ...], revision: int) -> Memo | None:
    memo = table.peek(name, key, revision)
    return None if memo is None else pack_memo_or_error(memo)


def _set_input(
    table: SharedJobTable,
    name: str,
    key: Hashable,
    value: bytes,
    durability: int = LOW,
) -> int:
    return table.set_input(name, key, unpack_value(value), durability)


def _get_input(
    table: SharedJobTable, name: str, key: Hashable, revision: int
) -> tuple[InputState, Any, int, int]:
    state, value, changed_at, durability = table.get_input(name, key, revision)
    if state is SET:
        value = pack_value(value)
    return state, value, changed_at, durability


def _get_inputs(
    table: SharedJobTable, name: str, keys: list[Hashable], revision: int
) -> list[tuple[InputState, Any, int, int]]:
    return [_get_input(table, name, key, revision) for key in keys]


def _unloadable(name: str, key: tuple[Any, ...], exc: Exception) -> TypeError:
    return TypeError(
        f"the result of {name}{key!r}, computed in a worker, cannot be loaded in the process "
        f"that created the database (pid {os.getpid()}): {type(exc).__name__}: {exc}; "
        "make its class importable there (define it in a module), or mark the query local=True"
    )


def _plain(method: Any) -> Any:
    """A request that runs the table's *method* as it is."""
    return lambda table, *args, **kwargs: method(table, *args, **kwargs)


_REQUESTS: dict[str, Any] = {
    "claim": _claim,
    "reserve": _reserve,
    "events": _events,
    "peek": _peek,
    "add_hits": _plain(InProcessJobTable.add_hits),
    "stats": _plain(InProcessJobTable.stats),
    "set_input": _set_input,
    "get_input": _get_input,
    "get_inputs": _get_inputs,
    "input_changes": _plain(InProcessJobTable.input_changes),
    "sync": lambda table: None,  # its reply says the requests before it are done
}
_ONE_WAY = frozenset({"events"})
