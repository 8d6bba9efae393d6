"""The hit path: a bound query (``db.parse``) called with a key whose value this thread has.

Measured by ``benchmarks/bench_query.py`` (hits against ``functools.cache``, and two threads
hammering cached keys on free-threaded 3.13t): run it on 3.13t and 3.11 for any change here.
The design is explained in ``docs/architecture.md#the-hit-path``.

A one-argument hit is three calls, all C code but one::

    db.parse          property -> operator.attrgetter -> this thread's _ThreadQueries attribute
    parse(arg)        BoundQuery (functools.partial) -> _hit(ident, binding, arg)
    _hit              binding._call(arg): this thread's functools.lru_cache -> the value

Free-threading invariants (each one is why the code below looks as it does):

1. **Nothing on the path is shared between threads except immortal objects.** Every call writes
   the reference count of the objects it loads, and two threads writing one object's count
   take turns on its cache line. So each thread has bound queries of its own
   (:class:`_ThreadQueries` is a ``threading.local``), each with its own binding and cache
   (:class:`ThreadState`); ``_hit`` is a module-level function and ``_NoArg`` and ``_Miss``
   are classes, which 3.13t makes immortal once a second thread starts. (The cached values
   themselves are the memos' values, shared as they must be.)
2. **No attribute read but ``binding._call``, no global.** 3.13t does not specialize, so each
   costs a dictionary lookup: the thread's identifier is one of the partial's arguments, and
   ``get_ident`` and ``_NO_ARG`` are keyword defaults (locals).
3. **No ``dict.get`` of a dict another thread writes** (see ``lookup`` in
   ``dualmode.query.memo``): the caches and the memo copies a thread reads are its own.
4. **A new revision reaches every thread's next call.** ``Runtime.learn_revision`` publishes the
   revision, then sets every binding's ``_call`` to None; calling None raises TypeError, and
   the slow path moves the thread on (``Runtime.install`` points the bindings again under the
   thread's lock, which ``learn_revision`` takes to reset them). A value goes only into the
   cache of the revision it was fetched in (see ``_Binding.miss``).
5. **Errors are never cached here**: the cache's function raises :class:`_Miss` or returns a
   value, so a memoized exception is raised anew by the miss path on every call.
6. **A thread's identifier may be reused** at once after it ends: :class:`_ThreadEnd` retires
   the ended thread's bindings, so a new thread with the same identifier takes the slow path.
"""

from __future__ import annotations

import functools
import operator
import os
import threading
from collections.abc import Callable, Iterable
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .memo import COUNTED_REVISIONS, HIGH, Memo, MemoState, QKey, lookup

if TYPE_CHECKING:
    from .database import Database, _QueryDescriptor
    from .runtime import Runtime

__all__ = ["BoundQuery", "Frame", "ThreadState", "unhashable"]

T = TypeVar("T")
OK, EVICTED = MemoState.OK, MemoState.EVICTED


class Frame:
    """A query being executed (or verified) by a thread: what it has read so far, and the
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
    """Raised through a thread's cache when it does not hold the argument: the caller then
    runs the miss path outside the cache (lru_cache holds a lock while its function runs on
    free-threaded builds, and a query's miss path may re-enter the same cache)."""


def _primer(thread: ThreadState, rt: Runtime, name: str, index: int) -> Callable[[Any], Any]:
    """The function a thread's cache of one query wraps, called when the cache lacks an
    argument: the value the miss path put in ``thread.prime``, else a value this process
    already has (the common case: no exception), else :class:`_Miss`."""

    def prime(arg: Any) -> Any:
        value = thread.prime
        if value is not _NO_ARG:
            thread.prime = _NO_ARG
            return value
        key = (arg,)
        mine = thread.memos[index]
        carried = thread.carried[index]
        memo: Memo | None
        if key in mine:  # fetched in this revision without the cache (by a verification)
            memo = mine[key]
            thread.hits[index] += 1
        elif key in carried:  # valid as it was in an earlier revision: ThreadState.advance
            # ThreadState.take_carried, inline: re-validation comes here once per green read.
            memo = mine[key] = carried.pop(key)
            thread.greens += 1
            thread.hits[index] += 1
        else:
            memo = rt.fetch_hot(name, key, thread, index)
        if memo is None or memo.state is not OK:
            raise _Miss
        return memo.value

    return prime


def _recorder(
    stack: list[Frame], name: str, cache: Callable[[Any], Any], qkeys: dict[Any, QKey]
) -> Callable[[Any], Any]:
    """A thread's cache of query *name* as seen while a body runs: records the edge first.

    *qkeys*: the thread's one (name, (arg,)) per argument, shared by every edge to it, in
    every revision: fewer objects for the collector, which on free-threaded builds stops
    every thread while it runs, and memos of different revisions share their edges' keys
    (one set per revision made a long-lived database's memory creep up as its memos were
    replaced)."""

    def record(arg: Any) -> Any:
        if arg in qkeys:  # in and [], not .get: see dualmode.query.memo.lookup
            qkey = qkeys[arg]
        else:
            qkey = qkeys[arg] = (name, (arg,))
        stack[-1].deps.append(qkey)
        return cache(arg)

    return record


class ThreadState:
    """One thread's state in one database: the revision its queries run in, its stack of
    executing frames, its own copy of the memos it has read in that revision, and its hits
    not yet counted by the table (only this thread writes them).

    One-argument calls, the common case, hit ``caches``: per query a ``functools.lru_cache`` of
    this thread's, by bare argument, holding plain values, that counts its hits in C (no key
    tuple, no Python counter). ``calls`` is what the hit path calls: ``caches``, or while a body
    runs ``recording``, which records the dependency edge first. Errors are not cached there.
    ``bound`` holds this thread's bindings; :meth:`switch` points each at its entry of
    ``calls``.
    """

    __slots__ = (
        "bound",
        "caches",
        "calls",
        "carried",
        "greens",
        "hits",
        "id",
        "index",
        "lock",
        "memos",
        "names",
        "past_greens",
        "prime",
        "qkeys",
        "recording",
        "revision",
        "rt",
        "stack",
        "unknown_deps",
    )

    def __init__(self, rt: Runtime, names: list[str], revision: int) -> None:
        n = len(names)
        self.rt = rt
        self.id = (os.getpid(), threading.get_ident())
        self.lock = threading.Lock()  # see Runtime.install
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        # Dicts this thread owns: see dualmode.query.memo.lookup for why hits avoid shared ones.
        self.memos: list[dict[tuple[Any, ...], Memo]] = [{} for _ in range(n)]
        # Copies from earlier revisions, still valid in this one and not read in it yet.
        self.carried: list[dict[tuple[Any, ...], Memo]] = [{} for _ in range(n)]
        # (query index, key) of copies whose dependencies are unknown: never carried over.
        self.unknown_deps: list[tuple[int, tuple[Any, ...]]] = []
        self.revision = revision
        self.stack: list[Frame] = []
        self.hits = [0] * n  # besides those the caches count
        self.prime: Any = _NO_ARG
        self.qkeys: list[dict[Any, QKey]] = [{} for _ in range(n)]  # see _recorder
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
            _recorder(self.stack, n, c, q)
            for n, c, q in zip(self.names, self.caches, self.qkeys, strict=True)
        ]
        self.calls = self.recording if self.stack else self.caches

    def switch(self) -> None:
        """Point this thread's bindings at ``calls`` (only this thread calls it)."""
        calls = self.calls
        for bound in self.bound:
            bound._call = calls[bound._index]

    def all_hits(self) -> list[int]:
        return [n + c.cache_info().hits for n, c in zip(self.hits, self.caches, strict=False)]

    def advance(self, revision: int, changes: set[QKey] | None) -> None:
        """Move to a newer revision. The copies of memos this thread holds are carried over
        but for *changes*, what may have changed since its revision (``JobTable.changes``;
        None: anything, so none is carried): the others are valid in the new revision as
        they were (salsa's green), and reading one again takes no claim, only a move from
        ``carried`` to ``memos`` (:meth:`take_carried`), counted green once.

        ``memos`` is a new dict: a body of the old revision that finishes after this stores
        its memo into the old revision's dict (see ``Runtime.fetch``), never into this one."""
        if self.greens:
            self.past_greens[self.revision] = self.greens
            self.greens = 0
        oldest = revision - COUNTED_REVISIONS  # as the table counts verdicts
        if self.past_greens and min(self.past_greens) < oldest:
            self.past_greens = {r: n for r, n in self.past_greens.items() if r >= oldest}
        self.revision = revision
        if changes is None:
            self.carried = [{} for _ in self.memos]
        else:
            for carried, mine in zip(self.carried, self.memos, strict=True):
                carried.update(mine)
            for i, key in self.unknown_deps:
                self.carried[i].pop(key, None)
            index = self.index
            for name, key in changes:
                if name in index:  # not an input's
                    self.carried[index[name]].pop(key, None)
            for name in self.rt.lru:  # no copy of a value its lru= bound dropped
                i, table = index[name], self.rt.memos[name]
                self.carried[i] = {
                    key: memo
                    for key, memo in self.carried[i].items()
                    if (kept := lookup(table, key)) is not None and kept.state is not EVICTED
                }
        self.unknown_deps = []
        self.memos = [{} for _ in self.memos]
        self._new_caches()

    def take_carried(self, index: int, key: tuple[Any, ...]) -> Memo | None:
        """The memo of query *index* and *key* carried over from an earlier revision (see
        :meth:`advance`), now this revision's copy and counted green and as a hit; None if
        none is carried."""
        carried = self.carried[index]
        if key not in carried:
            return None
        memo = self.memos[index][key] = carried.pop(key)
        self.greens += 1
        self.hits[index] += 1
        return memo

    def enter(self, frame: Frame) -> None:
        """Push a frame; with the first, calls record their dependency edges."""
        self.stack.append(frame)
        if len(self.stack) == 1:
            self.calls = self.recording
            self.switch()

    def leave(self) -> None:
        """Pop the innermost frame; with the last, calls stop recording (and the thread moves
        to the current revision: see ``Runtime.install``)."""
        self.stack.pop()
        if not self.stack:
            self.calls = self.caches
            self.rt.install(self)


def unhashable(name: str, key: tuple[Any, ...]) -> TypeError:
    """The TypeError for a call of query *name* whose key cannot be a memo key."""
    for position, arg in enumerate(key):
        try:
            hash(arg)
        except TypeError:
            return TypeError(
                f"query {name!r}: argument {position} ({type(arg).__name__}) is unhashable, so "
                "it cannot be a memo key; pass a hashable value (a tuple, frozenset, str...)"
            )
    return TypeError(f"query {name!r}: its key {key!r} is unhashable")


class _Binding(Generic[T]):
    """What one thread's bound query of one database works with: the thread it was bound in
    and the entry of that thread's ``calls`` for the query (see :func:`_hit`)."""

    __slots__ = ("_call", "_ident", "_index", "_name", "_rt")

    def __init__(self, rt: Runtime, name: str, index: int) -> None:
        self._rt = rt
        self._name = name
        self._index = index
        self._ident: int | None = get_ident()  # None once that thread has ended
        # thread.calls[index] (see ThreadState.switch), or None after a new revision began.
        self._call: Callable[[Any], Any] | None = None

    def other_call(self, arg: Any, more: tuple[Any, ...]) -> T:
        """A call from a thread other than the one this was bound in (passed on to that
        thread's own), or with no argument or several."""
        if self._ident != get_ident():
            mine: BoundQuery[T] = getattr(self._rt.db, self._name)
            return mine() if arg is _NO_ARG else mine(arg, *more)
        return self._call_key(() if arg is _NO_ARG else (arg, *more))

    def miss(self, arg: Any) -> T:
        """A one-argument call whose value this thread's cache lacks."""
        thread = self._rt.thread()
        # This revision's cache: a body executed by the fetch may end after an input changed,
        # and the thread then moves on; its value must not land in the next revision's cache.
        cache = thread.caches[self._index]
        memo = self._rt.fetch(self._name, (arg,), thread)
        if memo.state is not OK:
            raise memo.value  # errors stay out of the cache: each call raises it anew
        thread.prime = memo.value
        cache(arg)  # the cache stores the primed value...
        thread.prime = _NO_ARG  # ...unless a nested call of the same key already had
        return memo.value  # type: ignore[no-any-return]

    def _call_key(self, key: tuple[Any, ...]) -> T:
        """A call with no argument or several: keyed by their tuple, in the thread's memos."""
        thread = self._rt.thread()
        if thread.stack:
            thread.stack[-1].deps.append((self._name, key))
        try:
            memo = thread.memos[self._index].get(key)
        except TypeError:
            raise unhashable(self._name, key) from None
        if memo is None:
            memo = thread.take_carried(self._index, key)
            if memo is None:
                return self._rt.get(self._name, key, thread)  # type: ignore[no-any-return]
        else:
            thread.hits[self._index] += 1
        if memo.state is OK:
            return memo.value  # type: ignore[no-any-return]
        raise memo.value


def _hit(
    ident: int,
    binding: _Binding[T],
    arg: Any = _NO_ARG,
    /,
    *more: Any,
    _get_ident: Any = get_ident,
    _no_arg: Any = _NO_ARG,
) -> T:
    """A call of a bound query bound in thread *ident*. The hit path of a one-argument call is
    one call of this thread's own C-level cache (see ThreadState): no key tuple, no lock,
    nothing shared written (see this module's invariants 1-2)."""
    if ident != _get_ident() or more or arg is _no_arg:
        return binding.other_call(arg, more)
    try:
        return binding._call(arg)  # type: ignore[misc,no-any-return]
    except _Miss:
        return binding.miss(arg)
    except TypeError:
        if binding._call is None:  # a new revision, or the thread that bound it has ended
            if binding._ident != _get_ident():  # ended: this one only shares its identifier
                return binding.other_call(arg, more)
            binding._rt.thread()  # move this thread on, then ask again
            return _hit(ident, binding, arg)
        try:
            hash(arg)
        except TypeError:
            raise unhashable(binding._name, (arg,)) from None
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
        """``self(*key)`` from async code, under asyncio or trio (through anyio), for sync
        and async queries alike.

        A memo that is still valid is returned (or its exception raised) at once. Otherwise,
        on serial and threads, the calling task claims the key (or waits for its owner on the
        event loop, after the cycle check): an async body runs on this event loop, a sync
        body on one of the backend's workers (serial: on this thread), so the loop never
        blocks on a sync body or on another caller. On processes the call runs on a worker
        process (a ``local=True`` query: on a thread of this process).

        Cancelled while it waits, the task leaves nothing behind; cancelled while it computes
        an async body, it abandons the claim (a waiter or the next caller computes it); a sync
        body already running on a worker finishes and is memoized. Raises what the query
        raises, ``CycleError``, ``dm.Cancelled`` (an input changed meanwhile), TypeError for
        an unhashable key. See ``docs/queries.md#async-queries``.
        """
        return await self._binding._rt.async_get(self, key)

    def peek(self, *key: Any, default: Any = None) -> Any:
        """The memoized value without computing anything: *default* if it was never computed,
        or something it read changed since; the memoized exception is raised if the query
        failed."""
        binding = self._binding
        return binding._rt.peek_value(binding._name, key, default)

    def prefetch(self, keys: Iterable[Any]) -> None:
        """Compute every missing key in parallel on the database's backend (a key that is a
        tuple is passed as several arguments). Keys already memoized in the current revision
        are skipped at once. Failures stay memoized; nothing is raised, but TypeError for a
        key that cannot be hashed."""
        binding = self._binding
        binding._rt.prefetch(binding._name, keys)

    def __reduce__(self) -> tuple[Any, ...]:
        binding = self._binding
        return getattr, (binding._rt.db, binding._name)  # the shipped database's same query

    def __repr__(self) -> str:
        binding = self._binding
        return f"<query {binding._name} of {binding._rt.db!r}>"


def bound_query(rt: Runtime, descriptor: _QueryDescriptor[T]) -> BoundQuery[T]:
    """A new bound query of *rt*'s database for the calling thread."""
    thread = rt.thread()
    binding: _Binding[T] = _Binding(rt, descriptor.name, rt.index[descriptor.name])
    thread.bound.append(binding)
    rt.install(thread)
    return BoundQuery(_hit, binding._ident, binding)


# The attribute of a Database that holds its _ThreadQueries.
THREAD_QUERIES = "_dualmode_thread_queries"


def thread_query_getter(name: str) -> Callable[[Any], Any]:
    """The getter of ``db.<name>``: C code that reads this thread's bound query."""
    return operator.attrgetter(f"{THREAD_QUERIES}.{name}")


class _ThreadQueries(threading.local):
    """One database's bound queries, one set per thread: made on a thread's first access to
    each query (by a :class:`_Binder` of the database's class), then found in this thread's
    own attributes. When the thread ends they are retired (see :class:`_ThreadEnd`), so a
    later thread that reuses its identifier cannot mistake them for its own."""

    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt
        self.end = _ThreadEnd()


class _Binder:
    """A class attribute of a database class's _ThreadQueries subclass, per query: found
    only while this thread has no bound query of that name yet; makes and keeps one."""

    def __init__(self, descriptor: _QueryDescriptor[Any]) -> None:
        self.descriptor = descriptor

    @overload
    def __get__(self, queries: None, owner: type) -> _Binder: ...

    @overload
    def __get__(self, queries: _ThreadQueries, owner: type) -> BoundQuery[Any]: ...

    def __get__(self, queries: _ThreadQueries | None, owner: type) -> Any:
        if queries is None:
            return self
        bound = bound_query(queries.runtime, self.descriptor)
        queries.end.bound.append(bound._binding)
        setattr(queries, self.descriptor.name, bound)
        return bound


def thread_queries_class(
    database: type[Database], descriptors: list[_QueryDescriptor[Any]]
) -> type[_ThreadQueries]:
    """The _ThreadQueries subclass of a database class: one _Binder per query."""
    binders = {q.name: _Binder(q) for q in descriptors}
    return type(f"{database.__name__}ThreadQueries", (_ThreadQueries,), binders)


class _ThreadEnd:
    """Dropped with a thread's _ThreadQueries attributes when the thread ends."""

    def __init__(self) -> None:
        self.bound: list[_Binding[Any]] = []

    def __del__(self) -> None:
        for bound in self.bound:
            bound._ident = None  # calls from anywhere now go to the caller's own...
            bound._call = None  # ...even from a thread that reuses this one's identifier
