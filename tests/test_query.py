"""The query engine on every backend: memoized, single-flight, cycle-safe.

On processes the database's job table lives in the backend's coordinator, and the queries run
in worker processes: the classes here are at module level so that the workers can import them,
and the execution log is a dualmode Mutex, which every process can append to.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _concurrency import in_thread, read_while_changing

import dualmode as dm

pytestmark = pytest.mark.timeout(60)


def fallback(db: Analyzer, n: int) -> int:
    """guarded's cycle= value: -1, or for a negative key an error, which every reader of the
    cycle's value gets."""
    if n < 0:
        raise LookupError(f"no fallback for {n}")
    return -1


class Incomparable:
    """A value whose ``==`` raises, as some array types' does."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        raise TypeError("Incomparable values cannot be compared")

    __hash__ = None  # type: ignore[assignment]


class Analyzer(dm.Database):
    source = dm.input()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = self.backend.create_mutex(())  # every execution, in order

    @property
    def executed(self) -> list[tuple[str, Any]]:
        with self.log.lock() as guard:
            return list(guard.value)

    def _note(self, name: str, key: Any) -> None:
        with self.log.lock() as guard:
            guard.value = (*guard.value, (name, key))

    @dm.query
    def parse(self, path: str) -> str:
        self._note("parse", path)
        return str(self.source[path]).upper()

    @dm.query
    def length(self, path: str) -> int:
        self._note("length", path)
        return len(self.parse(path))

    @dm.query
    def fails(self, n: int) -> int:
        self._note("fails", n)
        raise ValueError(f"no {n}")

    @dm.query(cache_errors=False)
    def flaky(self, n: int) -> int:
        self._note("flaky", n)
        raise ValueError(f"flaky {n}")

    @dm.query
    def ping(self, n: int) -> int:
        return self.pong(n)

    @dm.query
    def pong(self, n: int) -> int:
        return self.ping(n)

    @dm.query(cycle=fallback)
    def guarded(self, n: int) -> int:
        return self.loop(n) + 1

    @dm.query
    def loop(self, n: int) -> int:
        return self.guarded(n) * 10

    @dm.query
    def slow(self, n: int) -> int:
        self._note("slow", n)
        time.sleep(0.2)
        return n * 2

    @dm.query
    def total(self) -> int:  # no argument: keyed by ()
        self._note("total", ())
        return self.length("a.py") + self.length("b.py")

    @dm.query
    def both(self, first: str, second: str) -> str:  # several: keyed by their tuple
        self._note("both", (first, second))
        return self.parse(first) + self.parse(second)

    @dm.query
    def has(self, path: str) -> bool:
        self._note("has", path)
        return path in self.source

    @dm.query
    def boxed(self, path: str) -> Incomparable:
        self._note("boxed", path)
        return Incomparable(len(self.source[path]))

    @dm.query
    def unboxed(self, path: str) -> int:
        self._note("unboxed", path)
        return self.boxed(path).n

    @dm.query
    def strict(self, path: str) -> str:
        raise ValueError(f"{path}: {len(self.source[path])} is not enough")

    @dm.query
    def verdict(self, path: str) -> str:
        self._note("verdict", path)
        try:
            return self.strict(path)
        except ValueError as exc:
            return str(exc)


@pytest.fixture
def db(dualmode_backend: str) -> Analyzer:
    return Analyzer(backend=dualmode_backend, workers=2)


def test_queries_are_memoized_per_key(db: Analyzer) -> None:
    db.source["a.py"] = "abc"
    db.source["b.py"] = "de"
    assert db.length("a.py") == 3 and db.length("a.py") == 3 and db.length("b.py") == 2
    assert db.executed == [
        ("length", "a.py"),
        ("parse", "a.py"),
        ("length", "b.py"),
        ("parse", "b.py"),
    ]
    stats = db.stats()
    assert stats["length"].executions == 2 and stats["length"].hits == 1
    assert stats["parse"].executions == 2 and stats["parse"].misses == 2
    assert db.parse.peek("a.py") == "ABC" and db.parse.peek("c.py", default=0) == 0


def test_errors_are_memoized_unless_asked_not_to(db: Analyzer) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="no 1"):
            db.fails(1)
        with pytest.raises(ValueError, match="flaky 1"):
            db.flaky(1)
    assert db.executed.count(("fails", 1)) == 1
    assert db.executed.count(("flaky", 1)) == 2


def test_bad_keys_and_inputs_are_clear_errors(db: Analyzer) -> None:
    with pytest.raises(TypeError, match=r"query 'parse': argument 0 \(list\) is unhashable"):
        db.parse(["a"])  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=r"input 'source' has no value for 'missing\.py'"):
        db.parse("missing.py")


def test_a_cycle_raises_cycle_error_with_a_canonical_cycle(db: Analyzer) -> None:
    with pytest.raises(dm.CycleError) as from_pong:
        db.pong(1)
    assert from_pong.value.cycle == [("ping", 1), ("pong", 1)]
    with pytest.raises(dm.CycleError) as from_ping:  # memoized, same error
        db.ping(1)
    assert from_ping.value.cycle == from_pong.value.cycle


def test_a_cycle_fallback_gives_values_not_errors(db: Analyzer) -> None:
    assert db.loop(2) == -10  # guarded takes its fallback; loop is computed from it
    assert db.guarded(2) == -1


def test_queries_with_no_argument_or_several_are_memoized_by_their_tuple(db: Analyzer) -> None:
    db.source["a.py"] = "abc"
    db.source["b.py"] = "de"
    for _ in range(3):
        assert db.total() == 5
        assert db.both("a.py", "b.py") == "ABCDE"
        with pytest.raises(KeyError, match=r"no value for 'c\.py'"):  # an error, memoized too
            db.both("a.py", "c.py")
    assert db.both("b.py", "a.py") == "DEABC"  # another key: the order of the arguments counts
    executed = db.executed
    assert executed.count(("total", ())) == 1
    assert executed.count(("both", ("a.py", "b.py"))) == 1
    assert executed.count(("both", ("a.py", "c.py"))) == 1
    assert db.stats()["total"].hits == 2 and db.stats()["both"].hits == 4
    assert db.total.peek() == 5 and db.both.peek("a.py", "b.py") == "ABCDE"
    with pytest.raises(TypeError, match=r"query 'both': argument 1 \(list\) is unhashable"):
        db.both("a.py", ["b.py"])  # type: ignore[arg-type]
    db.source["b.py"] = "xyz"  # both read b.py: each re-executes once
    assert db.total() == 6 and db.both("a.py", "b.py") == "ABCXYZ"
    assert db.executed.count(("total", ())) == 2


def test_key_in_an_input_is_a_read_a_query_depends_on(db: Analyzer) -> None:
    assert "a.py" not in db.source
    assert db.has("a.py") is False
    db.source["a.py"] = "x"
    assert "a.py" in db.source and "b.py" not in db.source
    assert db.has("a.py") is True  # it read "a.py in source": the change reaches it
    assert db.has("b.py") is False
    db.source["b.py"] = "y"
    db.has.prefetch(["a.py", "b.py"])  # on a worker too (processes)
    assert db.has("b.py") is True and db.has("a.py") is True
    assert db.executed.count(("has", "a.py")) == 2  # b.py changed, a.py did not: green
    with pytest.raises(TypeError):
        [] in db.source  # type: ignore[comparison-overlap]  # noqa: B015


def test_a_cycle_fallback_that_raises_gives_its_error_to_every_reader(db: Analyzer) -> None:
    for _ in range(2):
        with pytest.raises(LookupError, match="no fallback for -1"):
            db.loop(-1)
        with pytest.raises(LookupError, match="no fallback for -1"):
            db.guarded(-1)
    with pytest.raises(LookupError, match="no fallback for -1"):
        db.guarded.peek(-1)
    assert db.loop(1) == -10  # the other keys' fallbacks are values


def test_an_eq_that_raises_while_backdating_counts_as_a_change(db: Analyzer) -> None:
    db.source["a.py"] = "ab"
    assert db.unboxed("a.py") == 2
    db.source["a.py"] = "cd"  # boxed re-executes; comparing its values raises
    assert db.unboxed("a.py") == 2
    assert db.executed.count(("boxed", "a.py")) == 2
    assert db.executed.count(("unboxed", "a.py")) == 2  # not backdated: its reader re-ran


def test_an_error_equal_to_the_last_one_is_backdated(db: Analyzer) -> None:
    db.source["a.py"] = "ab"
    assert db.verdict("a.py") == "a.py: 2 is not enough"
    db.source["a.py"] = "cd"  # strict raises an equal error: verdict stays green
    assert db.verdict("a.py") == "a.py: 2 is not enough"
    assert db.executed.count(("verdict", "a.py")) == 1
    db.source["a.py"] = "abc"  # another message: verdict re-executes
    assert db.verdict("a.py") == "a.py: 3 is not enough"
    assert db.executed.count(("verdict", "a.py")) == 2


def ask_slow(db: Analyzer, start: dm.Barrier, n: int) -> int:
    start.wait()
    return db.slow(n)


def test_a_bound_query_offers_its_methods_and_belongs_to_one_database(db: Analyzer) -> None:
    db.source["a.py"] = "x"
    bound = db.parse
    assert isinstance(bound, dm.BoundQuery)
    assert bound is db.parse  # made once per database
    assert repr(bound).startswith("<query parse of <Analyzer")
    assert bound.peek("a.py", default="none yet") == "none yet"
    bound.prefetch(["a.py"])
    assert bound.peek("a.py") == "X"
    other = Analyzer(backend=db.backend)
    other.source["a.py"] = "y"
    assert (db.parse("a.py"), other.parse("a.py")) == ("X", "Y")  # each database its own


class Relay(dm.Database):
    """A query whose body calls a bound query it did not look up itself (``self.handle``)."""

    source = dm.input()

    @dm.query
    def size(self, key: str) -> int:
        return len(self.source[key])

    @dm.query
    def relayed(self, key: str) -> int:
        return int(self.handle(key)) * 10


def test_each_thread_gets_a_bound_query_of_its_own(dualmode_backend: str) -> None:
    if dualmode_backend == "serial":
        pytest.skip("a serial database is used only by the thread that made it")
    db = Relay(backend=dualmode_backend, workers=2)
    db.source["a"] = "xyz"
    mine = db.size
    theirs = in_thread(lambda: (db.size, db.size))
    assert theirs[0] is theirs[1] and theirs[0] is not mine  # one per thread, kept
    assert isinstance(theirs[0], dm.BoundQuery)
    assert in_thread(theirs[0], "a") == mine("a") == 3


@pytest.mark.parametrize("repeat", range(3))
def test_a_bound_query_from_another_thread_records_its_dependencies(repeat: int) -> None:
    """A body that calls a bound query taken in another thread (here the main one) records
    the edge in its own frame, so an input change still reaches it."""
    db = Relay(backend="threads", workers=2)
    db.handle = db.size  # bound in the main thread
    db.source["a"] = "xx"
    assert in_thread(db.relayed, "a") == 20  # the body runs on the other thread
    db.source["a"] = "xxx"
    assert in_thread(db.relayed, "a") == 30
    assert db.relayed("a") == 30


@pytest.mark.parametrize("repeat", range(3))
def test_a_bound_query_outlives_the_thread_it_was_bound_in(repeat: int) -> None:
    """A thread's bound query, kept after the thread ended, is nobody's own: a later thread
    (which often gets the same identifier) uses its own, and records its edges."""
    db = Relay(backend="threads", workers=2)
    db.handle = in_thread(lambda: db.size)
    gc.collect()
    db.source["a"] = "xx"
    assert in_thread(db.relayed, "a") == 20
    db.source["a"] = "xxx"
    assert in_thread(db.relayed, "a") == 30
    assert db.handle("a") == 3


def test_a_dropped_database_is_freed_while_other_threads_live(dualmode_backend: str) -> None:
    """Nothing keeps a database's memos once it is dropped, even with other threads alive
    (on free-threaded 3.13 the collector cannot free some kinds of objects then)."""
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)
    other.start()
    try:
        db = Analyzer(backend=dualmode_backend, workers=2)
        db.source["a.py"] = "x"
        if dualmode_backend != "serial":  # a serial database stays on its thread
            asker = threading.Thread(target=db.length, args=("a.py",))
            asker.start()
            asker.join(30)
        db.parse.prefetch(["a.py"])
        dropped = weakref.ref(db)
        del db
        gc.collect()
        assert dropped() is None
    finally:
        idle.set()
        other.join(30)


class Gate(dm.Database):
    """``held`` reads its input, then waits for ``go``: an input may change in between."""

    source = dm.input()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read = threading.Event()
        self.go = threading.Event()

    @dm.query
    def held(self, key: str) -> str:
        value = str(self.source[key])
        self.read.set()
        self.go.wait(30)
        return value


@pytest.mark.parametrize("repeat", range(3))
def test_a_value_computed_across_an_input_change_stays_in_its_revision(
    dualmode_parallel_backend: str, repeat: int
) -> None:
    """A body that read its input before the input changed, and nothing after, finishes with
    the old value for its caller; the thread's next call, in the new revision, gets the new
    value (the old one must not be cached for it)."""
    db = Gate(backend=dualmode_parallel_backend, workers=2)
    db.source["k"] = "old"
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(lambda: (db.held("k"), db.held("k")))
        assert db.read.wait(30)
        db.source["k"] = "new"
        db.go.set()
        assert asked.result(timeout=30) == ("old", "new")
    assert db.held("k") == "new"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("repeat", range(3))
def test_threads_hitting_cached_keys_see_every_new_revision(repeat: int) -> None:
    """Hits race with input changes: a call started after an input was set never returns a
    value from before it (a thread's own copies of what changed are dropped with the revision).
    A call that executes the query while an input changes raises Cancelled, by contract."""
    db = Analyzer(backend="threads", workers=2)
    keys = [f"{n}.py" for n in range(20)]
    for key in keys:
        db.source[key] = "v0"

    def change(v: int) -> None:
        for key in keys:
            db.source[key] = f"v{v}"

    stale = read_while_changing(
        db.parse,
        keys,
        change,
        40,
        lambda key, floor, value: int(value[1:]) < floor,
        retry=(dm.Cancelled,),  # it was executing when an input changed: ask again
    )
    assert not stale, stale[:5]
    assert all(db.parse(key) == "V39" for key in keys)


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("repeat", range(3))
def test_eight_callers_asking_one_missing_key_execute_it_once(backend: str, repeat: int) -> None:
    db = Analyzer(backend=backend, workers=2)
    start = dm.Barrier(8, backend=db.backend, timeout=20)
    results: list[int] = []

    def ask() -> None:
        results.append(ask_slow(db, start, 21))

    # 8 threads of this process; on processes also both workers, each with its own 8 callers.
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [42] * 8
    if backend == "processes":
        workers = dm.Barrier(2, backend=db.backend, timeout=20)
        ask = functools.partial(ask_slow, db, workers)
        assert dm.par_map(ask, [22, 22], backend=db.backend) == [44, 44]
    expected = [("slow", 21)] + ([("slow", 22)] if backend == "processes" else [])
    assert db.executed == expected
    assert db.stats()["slow"].executions == len(expected)  # counted in the job table


class Crossing(dm.Database):
    """``a`` needs ``b`` and ``b`` needs ``a``; each body first meets the other at ``both``,
    so both are running, on two runners, when they ask for each other."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parties = 1 if self.backend.name == "serial" else 2
        self.both = dm.Barrier(parties, backend=self.backend, timeout=20)

    @dm.query
    def a(self, k: int) -> int:
        self.both.wait()
        return self.b(k)

    @dm.query
    def b(self, k: int) -> int:
        self.both.wait()
        return self.a(k)


def enter_crossing(db: Crossing, name: str) -> list[Any]:
    try:
        getattr(db, name)(7)
    except dm.CycleError as exc:
        return exc.cycle
    raise AssertionError(f"{name}(7) did not raise CycleError")


@pytest.mark.thread_unsafe(reason="its bodies meet at a barrier: it needs both pool workers")
@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("repeat", range(3))
def test_a_cycle_across_two_runners_raises_in_both_at_once(backend: str, repeat: int) -> None:
    # A on one thread (or worker process) needs B while B on the other needs A: both bodies
    # are running (they met at the barrier), so the cycle is closed across the two runners,
    # and each raises instead of waiting for the other (the test's timeout fails a hang).
    db = Crossing(backend=backend, workers=2)
    enter = functools.partial(enter_crossing, db)
    cycle_a, cycle_b = dm.par_map(enter, ["a", "b"], chunksize=1, backend=db.backend)
    assert cycle_a == cycle_b == [("a", 7), ("b", 7)]
    with pytest.raises(dm.CycleError) as serial:
        Crossing(backend="serial").b(7)
    assert serial.value.cycle == cycle_a


class Ring(dm.Database):
    """``link(0) -> link(1) -> ... -> link(size - 1) -> link(0)``, where the links in *guarded*
    are asked through ``guarded`` (a ``cycle=`` fallback) and the others through ``plain``.
    The first *meet* bodies to start wait at a barrier for each other, so that two callers
    both hold a claim on the ring before either reads on (a cycle closed across them)."""

    def __init__(self, size: int, guarded: set[int], meet: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.guarded_links = size, frozenset(guarded)
        self.meet = meet
        self.arrived = dm.AtomicInt(0, backend=self.backend)
        self.both = dm.Barrier(max(meet, 1), backend=self.backend, timeout=20)

    def link(self, i: int) -> int:
        return (self.guarded if i in self.guarded_links else self.plain)(i)

    def _body(self, i: int) -> int:
        if self.arrived.fetch_add(1) < self.meet:
            self.both.wait()
        return i + 10 * self.link((i + 1) % self.size)

    @dm.query
    def plain(self, i: int) -> int:
        return self._body(i)

    @dm.query(cycle=lambda db, i: -1 - i)
    def guarded(self, i: int) -> int:
        return self._body(i)


def ring_values(size: int, guarded: set[int]) -> list[int]:
    """What docs/queries.md says each link of a Ring is: a guarded one its fallback, the
    others computed from the next link, back to a guarded one."""
    values: dict[int, int] = {i: -1 - i for i in guarded}
    while len(values) < size:
        for i in range(size):
            if i not in values and (i + 1) % size in values:
                values[i] = i + 10 * values[(i + 1) % size]
    return [values[i] for i in range(size)]


@pytest.mark.parametrize("guarded", [{1}, {0, 2}], ids=["one-fallback", "two-fallbacks"])
def test_a_partly_guarded_cycle_gives_the_same_values_whichever_key_is_asked_first(
    dualmode_backend: str, guarded: set[int]
) -> None:
    # Asked first, a link without a fallback is the one whose own read closes the cycle: it
    # is computed again from the settled links rather than raising CycleError there.
    expected = ring_values(3, guarded)
    for first in range(3):
        db = Ring(3, guarded, backend=dualmode_backend, workers=2)
        assert db.link(first) == expected[first]
        assert [db.link(i) for i in range(3)] == expected, f"{first} asked first"
        executions = {name: s.executions for name, s in db.stats().items()}
        assert executions == {"plain": 3 - len(guarded), "guarded": len(guarded)}


def ask_links(db: Ring, firsts: list[int]) -> list[int]:
    return dm.par_map(db.link, firsts, chunksize=1, backend=db.backend)


@pytest.mark.timeout(120)
@pytest.mark.thread_unsafe(reason="its bodies meet at a barrier: it needs both pool workers")
@pytest.mark.parametrize(
    ("size", "guarded"), [(3, {1}), (4, {2})], ids=["3-ring", "4-ring-fallback-opposite"]
)
def test_a_partly_guarded_cycle_closed_across_two_runners_gives_the_same_values(
    dualmode_parallel_backend: str, size: int, guarded: set[int]
) -> None:
    # Two runners each claim one link and meet, then read on: the cycle closes across them,
    # by whichever reads last. In the 4-ring entered at 1 and 3, the runner holding the
    # fallback (2) waits for the other, which must compute the link it needs (1) itself:
    # waiting for it would hang.
    expected = ring_values(size, guarded)
    pairs = [(i, j) for i in range(size) for j in range(size) if i != j]
    with dm.use(dualmode_parallel_backend, workers=2):
        for _ in range(3):
            for first, second in pairs:
                db = Ring(size, guarded, meet=2)
                got = ask_links(db, [first, second])
                assert got == [expected[first], expected[second]], (first, second)
                assert [db.link(i) for i in range(size)] == expected, (first, second)


class Meeting(Analyzer):
    """``met(n)`` waits until another body is running too: it fails (BrokenBarrierError,
    memoized) unless two bodies run at the same time."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pairs = dm.Barrier(2, backend=self.backend, timeout=10)

    @dm.query
    def met(self, n: int) -> int:
        self._note("met", n)
        self.pairs.wait()
        return n * 2


@pytest.mark.thread_unsafe(reason="its bodies meet at a barrier: it needs both pool workers")
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_prefetch_computes_missing_keys_in_parallel(backend: str) -> None:
    db = Meeting(backend=backend, workers=2)
    db.met.prefetch(range(4))
    assert sorted(db.executed) == [("met", n) for n in range(4)]
    assert [db.met(n) for n in range(4)] == [0, 2, 4, 6]  # each met another: in parallel


# -- processes: the coordinator's job table ----------------------------------------------------


class LoadsBadly:
    """Pickles, but does not load: its pickle gives its ``__init__`` one argument of two."""

    def __init__(self, first: int, second: str) -> None:
        self.first, self.second = first, second

    def __reduce__(self) -> tuple[Any, ...]:
        return LoadsBadly, (self.first,)


class Shipped(dm.Database):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.home = os.getpid()  # an attribute of the database travels with it

    @dm.query(local=True)
    def tree(self, n: int) -> tuple[int, threading.Lock]:
        # An unpicklable value (a lock) is fine for a local=True query: it never travels.
        return os.getpid(), threading.Lock()

    @dm.query
    def pid_of_tree(self, n: int) -> int:
        return self.tree(n)[0]

    @dm.query
    def lock(self, n: int) -> threading.Lock:
        return threading.Lock()

    @dm.query
    def loads_badly(self, n: int) -> LoadsBadly:
        return LoadsBadly(n, "two")

    @dm.query
    def dies_in_a_worker(self, n: int) -> int:
        if os.getpid() != self.home:
            os._exit(3)
        return n


# What a worker's result may be: plain values travel inside their memo's own message, the rest
# as bytes of their own (backends/processes/packing.py). A bytes value must not be taken for a
# packed one, nor None for a local=True marker.
_VALUES = [7, -(2**70), 2.5, "text", True, False, None, b"raw bytes", (1, "two"), {"k": [3]}]


class Values(dm.Database):
    @dm.query
    def value(self, n: int) -> Any:
        return _VALUES[n]

    @dm.query
    def described(self, n: int) -> tuple[str, Any]:
        value = self.value(n)
        return type(value).__name__, value


def test_every_kind_of_value_travels_between_processes_unchanged() -> None:
    db = Values(backend="processes", workers=2)
    keys = range(len(_VALUES))
    db.value.prefetch(keys)  # executed in the workers
    assert [db.value(n) for n in keys] == _VALUES
    assert [type(db.value(n)) for n in keys] == [type(v) for v in _VALUES]
    expected = [(type(v).__name__, v) for v in _VALUES]
    assert dm.par_map(db.described, keys, chunksize=1, backend=db.backend) == expected
    assert [db.described(n) for n in keys] == expected


def test_local_queries_keep_values_in_the_process_that_made_them() -> None:
    db = Shipped(backend="processes", workers=2)
    pids = dm.par_map(db.pid_of_tree, [1] * 8, backend=db.backend)
    # pid_of_tree(1) executes once in the whole tree; tree(1) stays in that worker.
    assert len(set(pids)) == 1 and pids[0] != os.getpid()
    assert db.stats()["pid_of_tree"].executions == 1
    # This process never received tree(1)'s value: asking here executes it here, once.
    assert db.tree(1)[0] == os.getpid() and db.tree(1)[0] == os.getpid()
    assert db.stats()["tree"].executions == 2


def test_an_unpicklable_value_is_a_clear_error_naming_local() -> None:
    db = Shipped(backend="processes", workers=2)
    with pytest.raises(TypeError, match=r"_thread.lock cannot be pickled.*local=True"):
        db.lock(1)


def test_a_value_computed_in_a_worker_that_cannot_come_back_is_its_callers_error() -> None:
    """One that does not pickle, one that does not load in the database's process: each
    caller gets a TypeError naming the query and what to do, and the pool works on."""
    db = Shipped(backend="processes", workers=2)
    db.lock.prefetch([1])  # executed in a worker
    db.loads_badly.prefetch([1])
    for _ in range(2):
        with pytest.raises(TypeError, match=r"_thread.lock cannot be pickled.*local=True"):
            db.lock(1)
        with pytest.raises(
            TypeError,
            match=r"^the result of loads_badly\(1,\), computed in a worker, cannot be loaded "
            r"in the process that created the database .*missing 1 required positional "
            r"argument.*or mark the query local=True",
        ):
            db.loads_badly(1)
    db.pid_of_tree.prefetch([1])
    assert db.pid_of_tree(1) != os.getpid()


def test_a_database_class_that_cannot_be_shipped_fails_at_creation() -> None:
    class Unshippable(dm.Database):
        guard = threading.Lock()

        @dm.query
        def q(self, n: int) -> int:
            return n

    with pytest.raises(TypeError, match=r"Unshippable cannot be used on the processes backend"):
        Unshippable(backend="processes")
    assert Unshippable(backend="threads").q(2) == 2  # in-process backends need no shipping


def test_in_process_databases_refuse_to_pickle() -> None:
    with pytest.raises(TypeError, match="its memos live in this process"):
        pickle.dumps(Shipped(backend="threads"))


@pytest.mark.thread_unsafe(reason="kills a worker of the processes pool other copies would share")
def test_a_worker_dying_mid_query_fails_its_waiters_and_nothing_is_memoized() -> None:
    db = Shipped(backend="processes", workers=2)
    with pytest.raises(dm.ParallelError) as lost:
        dm.par_map(db.dies_in_a_worker, [5], backend=db.backend)
    assert isinstance(lost.value.exceptions[0], dm.WorkerCrashed)
    # The dead worker's claim is given up: the waiter hears why, the next caller executes it.
    with pytest.raises(dm.WorkerCrashed, match=r"executing query dies_in_a_worker\(5,\) died"):
        db.dies_in_a_worker(5)
    assert db.dies_in_a_worker(5) == 5


# -- where a database may be used: its own class, its own thread ---------------------------------


class NotADatabase:
    """Declares a query and an input, but is not a dm.Database."""

    source = dm.input()

    @dm.query
    def parse(self, path: str) -> str:
        return path


class Doubling:
    """A mixin: its queries work in a Database subclass that includes it."""

    @dm.query
    def double(self, n: int) -> int:
        return 2 * n


class Mixed(Doubling, dm.Database):
    pass


class NotInitialized(dm.Database):
    source = dm.input()

    def __init__(self) -> None:  # forgets super().__init__()
        pass

    @dm.query
    def q(self, n: int) -> int:
        return n


def test_queries_and_inputs_outside_a_database_say_to_subclass_it() -> None:
    with pytest.raises(
        TypeError,
        match=r"query 'parse' is a @dm\.query method of NotADatabase, "
        r"which is not a dm\.Database.*subclass of dm\.Database",
    ):
        NotADatabase().parse("a.py")
    with pytest.raises(
        TypeError,
        match=r"dm\.input 'source' read on a NotADatabase that is not "
        r"an initialized dm\.Database.*subclass of dm\.Database",
    ):
        NotADatabase().source["a.py"] = "x"
    with pytest.raises(TypeError, match=r"subscripted on the class.*db\.source\[key\] = value"):
        Analyzer.source["a.py"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError, match=r"Doubling, which is not a dm\.Database"):
        Doubling().double(2)
    assert Mixed().double(2) == 4  # a mixin's queries work in a database
    with pytest.raises(
        TypeError,
        match=r"query 'q' asked of a dm\.Database that was not "
        r"initialized.*call super\(\)\.__init__",
    ):
        NotInitialized().q(1)
    with pytest.raises(TypeError, match=r"call super\(\)\.__init__"):
        NotInitialized().source["k"]


@pytest.mark.parametrize("repeat", range(3))
def test_a_serial_database_belongs_to_the_thread_that_created_it(repeat: int) -> None:
    """As serial primitives do: any use from another thread raises WrongThreadError, whether
    the query is looked up there, handed over bound, or is an input; nothing is computed."""
    db = Analyzer(backend="serial")
    db.source["a.py"] = "x"
    bound = db.length
    uses = [
        lambda: db.length("a.py"),
        lambda: bound("a.py"),
        lambda: db.source["a.py"],
        lambda: db.source.__setitem__("b.py", "y"),
        lambda: db.parse.prefetch(["a.py"]),
    ]
    for use in uses:
        with pytest.raises(
            dm.WrongThreadError,
            match=r"belongs to the thread that created it.*"
            r"backend='threads'",
        ):
            in_thread(use)
    assert db.executed == [] and db.revision == 2
    assert db.length("a.py") == 1  # its own thread still uses it


def test_a_parallel_database_is_shared_by_threads(dualmode_parallel_backend: str) -> None:
    db = Analyzer(backend=dualmode_parallel_backend, workers=2)
    db.source["a.py"] = "xy"
    assert in_thread(db.length, "a.py") == db.length("a.py") == 2
    assert db.executed == [("length", "a.py"), ("parse", "a.py")]


# -- processes: database classes travel as par_map's functions do ------------------------------


def test_a_class_made_in_a_function_runs_on_processes_as_on_serial() -> None:
    """A class that no other process can import travels by value (cloudpickle)."""

    class Squares(dm.Database):
        source = dm.input()

        @dm.query
        def total(self, n: int) -> int:
            return sum(self.source[i] for i in range(n)) + (self.total(n - 1) if n else 0)

        @dm.query
        def where(self, n: int) -> tuple[str, int]:
            return type(self).__qualname__, os.getpid()

    results = {}
    for backend in ("serial", "processes"):
        db = Squares(backend=backend, workers=2)
        for i in range(6):
            db.source[i] = i * i
        db.total.prefetch(range(7))
        db.source[3] = 0  # a new revision: re-validated on the workers too
        db.total.prefetch(range(7))
        stats = db.stats()
        results[backend] = [db.total(n) for n in range(7)], stats["total"].executions
    assert results["processes"] == results["serial"]
    db = Squares(backend="processes", workers=2)
    db.where.prefetch([0])
    name, pid = db.where(0)
    assert name.endswith("Squares") and pid != os.getpid()  # it ran in a worker


SCRIPT = """
import json
import os
import sys

import dualmode as dm


class Fib(dm.Database):  # at the top level: the workers import it from their copy of the script
    start = dm.input()

    @dm.query
    def fib(self, n):
        return self.start[n] if n < 2 else self.fib(n - 1) + self.fib(n - 2)

    @dm.query
    def where(self, n):
        return type(self).__module__, os.getpid()


if __name__ == "__main__":

    class Guarded(Fib):  # under the guard: the workers' copy lacks it, so it travels by value
        pass

    out = {}
    for cls in (Fib, Guarded):
        for backend in ("serial", "processes"):
            db = cls(backend=backend, workers=2)
            db.start[0], db.start[1] = 0, 1
            db.fib.prefetch(range(0, 40, 5))
            db.start[0] = 1
            db.fib.prefetch(range(0, 40, 5))
            db.where.prefetch([0])
            module, pid = db.where(0)
            out[f"{cls.__name__} {backend}"] = {
                "fib": [db.fib(n) for n in range(40)],
                "executions": db.stats()["fib"].executions,
                "module": module,
                "elsewhere": pid != os.getpid(),
            }
    json.dump(out, sys.stdout)
"""


@pytest.mark.timeout(180)
def test_a_database_class_of_the_main_script_runs_on_processes_as_on_serial(
    tmp_path: pathlib.Path,
) -> None:
    """A class at the top level of a script run with the usual ``__main__`` guard travels by
    reference (spawned workers import the script as ``__mp_main__``); one defined under the
    guard, which their copy lacks, by value."""
    script = tmp_path / "fib_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=150, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for name in ("Fib", "Guarded"):
        serial, processes = out[f"{name} serial"], out[f"{name} processes"]
        assert processes["fib"] == serial["fib"] and processes["fib"][39] == 102334155
        assert processes["executions"] == serial["executions"]
        assert processes["elsewhere"] and not serial["elsewhere"]
    assert out["Fib processes"]["module"] == "__mp_main__"  # by reference: the worker's copy
    assert out["Guarded processes"]["module"] == "__main__"  # by value: the parent's class
