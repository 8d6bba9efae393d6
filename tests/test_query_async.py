"""Queries from async code (``BoundQuery.async_get``) and async queries (``@dm.query async
def``), under asyncio and trio (anyio's plugin) and on every backend.

The classes are at module level so that worker processes can import them."""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _concurrency import JOIN_TIMEOUT
from test_query import Analyzer

import dualmode as dm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Slow(dm.Database):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.threads: list[int] = []
        # Where each body ran, seen from any process (a queue of the database's backend).
        self.places = dm.Queue(backend=self.backend)

    @dm.query
    def square(self, n: int) -> int:
        self.threads.append(threading.get_ident())
        self.places.put((os.getpid(), threading.get_ident()))
        time.sleep(0.2)
        return n * n

    @dm.query
    def fails(self, n: int) -> int:
        raise ValueError(f"no {n}")


async def test_async_get_runs_off_the_event_loop_and_memoizes(
    dualmode_parallel_backend: str,
) -> None:
    db = Slow(backend=dualmode_parallel_backend, workers=2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(tick)
        results = []
        async with anyio.create_task_group() as askers:
            for _ in range(4):
                askers.start_soon(lambda: _append(results, db.square.async_get(7)))
        tasks.cancel_scope.cancel()
    assert results == [49] * 4
    place = db.places.get(timeout=5)
    assert db.places.empty()  # once...
    assert place != (os.getpid(), threading.get_ident())  # ...on a worker, off the loop
    assert ticks >= 5  # the loop kept running while the body slept
    assert await db.square.async_get(7) == 49  # a valid memo: no thread needed
    assert db.stats()["square"].executions == 1


async def _append(results: list[int], pending: object) -> None:
    results.append(await pending)  # type: ignore[misc]


async def test_async_get_on_serial_runs_on_the_loop_thread_once() -> None:
    """A serial database belongs to the thread that created it (here the event loop's), so
    its bodies run there, as every serial call does: after a checkpoint, so a caller already
    cancelled starts nothing, and once however many tasks ask."""
    db = Slow(backend="serial")
    results: list[int] = []
    async with anyio.create_task_group() as askers:
        for _ in range(4):
            askers.start_soon(lambda: _append(results, db.square.async_get(7)))
    assert results == [49] * 4
    assert db.threads == [threading.get_ident()]
    with anyio.CancelScope() as scope:
        scope.cancel()
        await db.square.async_get(5)
    assert scope.cancelled_caught and db.square.peek(5) is None
    assert db.stats()["square"].executions == 1
    with pytest.raises(dm.WrongThreadError, match="belongs to the thread that created it"):
        await anyio.to_thread.run_sync(db.square, 3)  # pushing it to a thread by hand


async def test_async_get_raises_the_memoized_exception() -> None:
    db = Slow(backend="threads")
    for _ in range(2):
        with pytest.raises(ValueError, match="no 3"):
            await db.fails.async_get(3)


async def test_cancelling_the_await_leaves_the_body_to_finish() -> None:
    db = Slow(backend="threads")
    with anyio.move_on_after(0.05):
        await db.square.async_get(5)
    for _ in range(100):  # the abandoned thread finishes and memoizes
        if db.square.peek(5) is not None:
            break
        await anyio.sleep(0.02)
    assert db.square.peek(5) == 25
    assert db.stats()["square"].executions == 1


class Shared(dm.Database):
    """Nodes that all read a few slow shared ones: more askers than workers."""

    @dm.query
    def base(self, n: int) -> int:
        time.sleep(0.01)
        return n * 10

    @dm.query
    def node(self, n: int) -> int:
        time.sleep(0.005)
        return self.base(n % 2) + self.base(2) + n


async def test_more_tasks_than_workers_asking_shared_dependencies_never_hang(
    dualmode_backend: str,
) -> None:
    """Tasks at once, more than the two workers, asking nodes and, directly, the slow
    queries every node reads: every task gets its value. (A task's claim whose body waits
    in the pool's queue while every worker waits for that claim would hang here: the
    async-query branch did, see issue 13's note.)"""
    db = Shared(backend=dualmode_backend, workers=2)
    values: dict[tuple[str, int], int] = {}

    async def ask(name: str, n: int) -> None:
        values[(name, n)] = await getattr(db, name).async_get(n)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(ask, "node", n)
                tasks.start_soon(ask, "base", n % 3)
    assert values == {
        **{("node", n): (n % 2) * 10 + 20 + n for n in range(6)},
        **{("base", n): n * 10 for n in range(3)},
    }


class Handed(dm.Database):
    """A worker busy with ``outer``, whose body waits for a gate and then asks what a task
    has handed to the workers meanwhile: queued behind that very body."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.started = threading.Event()
        self.gate = threading.Event()
        self.ran_on: dict[tuple[object, ...], int] = {}

    @dm.query
    def outer(self, what: str, n: int) -> int:
        self.ran_on[("outer", what, n)] = threading.get_ident()
        self.started.set()
        assert self.gate.wait(10)
        return int(getattr(self, what)(n)) + 1

    @dm.query
    def base(self, n: int) -> int:
        self.ran_on[("base", n)] = threading.get_ident()
        return n * 10

    @dm.query
    def back(self, n: int) -> int:  # a cycle through outer("back", n)
        return self.outer("back", n)

    @dm.query
    async def via_loop(self, n: int) -> int:  # called by outer: on a private loop
        return await self.base.async_get(n) + 3

    @dm.query
    async def summary(self, n: int) -> int:
        await anyio.sleep(0.1)  # the worker waits for this body meanwhile
        return await self.base.async_get(n) + 2

    # A sync query calling an async one, which awaits a sync one: on a worker, each worker
    # runs the async body on a private loop, and the sync body it awaits there.
    @dm.query
    def leaf(self, n: int) -> int:
        time.sleep(0.01)
        return n

    @dm.query
    async def mid(self, n: int) -> int:
        return await self.leaf.async_get(n) + 1

    @dm.query
    def top(self, n: int) -> int:
        return self.mid(n) + 1


async def _while_busy(db: Handed, what: str, *asked: object) -> tuple[object, list[object]]:
    """Run ``outer(what, 1)`` on the only worker, then await each of *asked* from a task of
    its own, in turn (a sync body is queued behind outer), then open the gate: outer's
    outcome and the tasks'."""
    busy = db.backend.submit(db.outer, what, 1)
    assert await anyio.to_thread.run_sync(db.started.wait, 10)
    outcomes: list[object] = [None] * len(asked)

    async def ask(i: int) -> None:
        try:
            outcomes[i] = await asked[i]  # type: ignore[misc]
        except dm.CycleError as exc:
            outcomes[i] = exc

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for i in range(len(asked)):
                tasks.start_soon(ask, i)
                await anyio.sleep(0.01)  # the task has claimed (and handed its body over)
            db.gate.set()
            _ok, value = await anyio.to_thread.run_sync(busy.result, 20)
    return value, outcomes  # outer's value, or the exception it raised


async def test_a_worker_waiting_for_a_queued_hand_over_runs_it_itself() -> None:
    """The only worker waits for a body a task handed over, queued behind the worker's own:
    it runs that body itself, under the task's claim, and both get the value, once."""
    db = Handed(backend="threads", workers=1)
    outer, tasks = await _while_busy(db, "base", db.base.async_get(1))
    assert (outer, tasks) == (11, [10])
    assert db.ran_on[("base", 1)] == db.ran_on[("outer", "base", 1)]
    assert db.stats()["base"].executions == 1


async def test_a_hand_over_cancelled_before_anyone_takes_it_is_abandoned() -> None:
    """A task cancelled while its body waits in the queue abandons its claim: the worker that
    then asks for the key claims and computes it itself; the queued call does nothing."""
    db = Handed(backend="threads", workers=1)
    busy = db.backend.submit(db.outer, "base", 1)
    assert await anyio.to_thread.run_sync(db.started.wait, 10)
    with anyio.move_on_after(0.05) as scope:
        await db.base.async_get(1)
    assert scope.cancelled_caught and db.base.peek(1) is None
    db.gate.set()
    assert await anyio.to_thread.run_sync(busy.result, 20) == (True, 11)
    assert db.ran_on[("base", 1)] == db.ran_on[("outer", "base", 1)]
    assert db.stats()["base"].executions == 1


async def test_a_cycle_through_a_taken_over_hand_over_raises_cycle_error_in_both() -> None:
    """The worker that takes a task's body over runs it under the task's id: a cycle from
    there back to the worker's own query is found, as if another thread ran it."""
    db = Handed(backend="threads", workers=1)
    outer, [task] = await _while_busy(db, "back", db.back.async_get(1))
    assert isinstance(outer, dm.CycleError) and isinstance(task, dm.CycleError)
    assert outer.cycle == task.cycle == [("back", 1), ("outer", ("back", 1))]


async def test_a_worker_waiting_for_a_task_runs_the_body_that_task_hands_over_later() -> None:
    """The only worker waits for an async body running in a task, which then awaits a sync
    query: the task's hand-over wakes the waiting worker, which runs it."""
    db = Handed(backend="threads", workers=1)
    outer, tasks = await _while_busy(db, "summary", db.summary.async_get(1))
    assert (outer, tasks) == (13, [12])
    assert db.ran_on[("base", 1)] == db.ran_on[("outer", "summary", 1)]


async def test_a_worker_waiting_for_a_task_that_waits_for_a_hand_over_runs_it() -> None:
    """The only worker waits for an async body running in a task, which then awaits a sync
    query another task handed over before: the worker runs that body."""
    db = Handed(backend="threads", workers=1)
    outer, tasks = await _while_busy(db, "summary", db.base.async_get(1), db.summary.async_get(1))
    assert (outer, tasks) == (13, [10, 12])
    assert db.ran_on[("base", 1)] == db.ran_on[("outer", "summary", 1)]


async def test_a_worker_whose_private_loop_waits_for_a_queued_hand_over_gets_it_run() -> None:
    """The only worker calls an async query (on a private loop there) that awaits a sync one
    a task handed over before: a thread of its own runs that body (not the loop's thread)."""
    db = Handed(backend="threads", workers=1)
    outer, tasks = await _while_busy(db, "via_loop", db.base.async_get(1))
    assert (outer, tasks) == (14, [10])
    assert db.stats()["base"].executions == 1


async def test_sync_async_sync_chains_asked_by_more_tasks_than_workers_never_hang() -> None:
    """Tasks hand sync bodies to the workers that call an async query (run on a private loop
    there), which awaits a sync one: that runs on the same thread, not queued for the
    workers, which may all be busy the same way."""
    db = Handed(backend="threads", workers=2)
    values: dict[int, int] = {}

    async def ask(n: int) -> None:
        values[n] = await db.top.async_get(n)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(ask, n)
    assert values == {n: n + 2 for n in range(6)}
    assert db.stats()["leaf"].executions == 6


# -- async queries: ``@dm.query async def`` -------------------------------------------------


class Fetcher(Analyzer):
    """Async queries beside test_query's Analyzer (its ``source`` input and execution log)."""

    @dm.query
    async def fetch(self, path: str) -> int:
        self._note("fetch", path)
        await anyio.sleep(0.001)
        return len(str(self.source[path]))

    @dm.query
    async def report(self, path: str) -> str:
        self._note("report", path)
        size = await self.fetch.async_get(path)
        return f"{path}: {size} ({await self.length.async_get(path)})"

    @dm.query
    def sync_report(self, path: str) -> str:
        self._note("sync_report", path)
        return f"{path}: {self.fetch(path)}"

    @dm.query
    async def slow_async(self, n: int) -> int:
        self._note("slow_async", n)
        await anyio.sleep(0.1)
        return n * 3

    @dm.query
    async def over_slow(self, n: int) -> int:
        return await self.slow.async_get(n) + 1  # Analyzer.slow: a sync body of 0.2 s

    @dm.query
    async def reads_twice(self, path: str) -> str:
        first = self.source[path]
        self._note("reads_twice", path)
        await anyio.sleep(0.2)  # meanwhile the input changes
        return f"{first} {self.source[path]}"  # this read raises dm.Cancelled

    @dm.query
    async def tick(self, n: int) -> int:
        await anyio.sleep(0.05)  # so that both tasks have claimed before either asks
        return await self.tock.async_get(n)

    @dm.query
    async def tock(self, n: int) -> int:
        await anyio.sleep(0.05)
        return await self.tick.async_get(n)

    @dm.query
    def sync_slow(self, n: int) -> int:
        return self.slow_async(n)

    @dm.query
    async def afails(self, n: int) -> int:
        self._note("afails", n)
        await anyio.sleep(0)
        raise ValueError(f"async no {n}")

    @dm.query
    async def aping(self, n: int) -> int:
        return await self.apong.async_get(n)

    @dm.query
    def apong(self, n: int) -> int:
        return self.aping(n)  # a sync body asking for an async query: a thread's claim

    @dm.query
    async def place(self, n: int) -> tuple[int, str]:
        import sniffio

        await anyio.sleep(0)
        return os.getpid(), sniffio.current_async_library()

    @dm.query
    async def nap(self, n: int) -> int:
        self._note("nap", n)
        await anyio.sleep(random.random() * 0.002)
        return n + 1


@pytest.fixture
def fdb(dualmode_backend: str) -> Fetcher:
    return Fetcher(backend=dualmode_backend, workers=2)


def _count(db: Fetcher, name: str, key: object) -> int:
    return db.executed.count((name, key))


def test_sync_code_calls_async_queries(fdb: Fetcher) -> None:
    """``db.q(key)`` from sync code works for an async query (its body runs on a private
    event loop of the calling thread), and inside a sync body."""
    fdb.source["a.py"] = "abcd"
    assert fdb.fetch("a.py") == 4 and fdb.fetch("a.py") == 4
    assert fdb.sync_report("a.py") == "a.py: 4"
    assert fdb.report("a.py") == "a.py: 4 (4)"
    assert _count(fdb, "fetch", "a.py") == 1 and _count(fdb, "report", "a.py") == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="async no 2"):
            fdb.afails(2)
    assert _count(fdb, "afails", 2) == 1  # the error is memoized


async def test_async_code_awaits_sync_and_async_queries(fdb: Fetcher) -> None:
    fdb.source["a.py"] = "abc"
    assert await fdb.report.async_get("a.py") == "a.py: 3 (3)"
    assert await fdb.length.async_get("a.py") == 3
    assert await fdb.sync_report.async_get("a.py") == "a.py: 3"
    assert fdb.report("a.py") == "a.py: 3 (3)" if fdb.backend.name == "processes" else True
    assert [e for e in fdb.executed if e[0] in ("fetch", "report", "length")] == [
        ("report", "a.py"),
        ("fetch", "a.py"),
        ("length", "a.py"),
    ]


async def test_an_async_body_runs_on_an_event_loop_of_the_process_that_computes_it(
    fdb: Fetcher, anyio_backend: str
) -> None:
    pid, library = await fdb.place.async_get(1)
    if fdb.backend.name == "processes":  # on a worker process, on a private asyncio loop
        assert pid != os.getpid() and library == "asyncio"
    else:  # on the caller's own loop
        assert pid == os.getpid() and library == anyio_backend


async def test_many_tasks_and_threads_run_an_async_body_once(fdb: Fetcher) -> None:
    results: list[int] = []

    async def task() -> None:
        results.append(await fdb.slow_async.async_get(4))

    def thread() -> None:
        results.append(fdb.slow_async(4))

    async with anyio.create_task_group() as group:
        for i in range(16):
            if i % 2 and fdb.backend.parallel:
                group.start_soon(anyio.to_thread.run_sync, thread)
            else:
                group.start_soon(task)
    assert results == [12] * 16
    assert _count(fdb, "slow_async", 4) == 1
    assert fdb.stats()["slow_async"].executions == 1


async def test_an_async_error_is_memoized(fdb: Fetcher) -> None:
    for _ in range(3):
        with pytest.raises(ValueError, match="async no 5"):
            await fdb.afails.async_get(5)
    assert _count(fdb, "afails", 5) == 1


async def test_a_cycle_through_a_task_and_a_thread_raises_cycle_error_in_both(
    fdb: Fetcher,
) -> None:
    """aping (async, a task's) asks apong (sync: a worker's) which asks aping again."""
    with pytest.raises(dm.CycleError) as raised:
        await fdb.aping.async_get(1)
    assert raised.value.cycle == [("aping", 1), ("apong", 1)]
    with pytest.raises(dm.CycleError):
        await fdb.apong.async_get(1)
    if fdb.backend.parallel:  # (serial: no other thread may use the database)
        with pytest.raises(dm.CycleError):
            await anyio.to_thread.run_sync(fdb.apong, 1)
        with pytest.raises(dm.CycleError) as raised:  # a thread enters it first
            await anyio.to_thread.run_sync(fdb.apong, 2)
        assert raised.value.cycle == [("aping", 2), ("apong", 2)]


async def test_a_cycle_between_two_tasks_raises_cycle_error_in_both(fdb: Fetcher) -> None:
    """Two tasks each compute one of two async queries that ask for each other: the second
    wait closes the cycle and both get CycleError (on processes, two workers' loops)."""
    raised: list[BaseException] = []

    async def ask(query: dm.BoundQuery[int]) -> None:
        try:
            await query.async_get(1)
        except dm.CycleError as exc:
            raised.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(ask, fdb.tick)
        group.start_soon(ask, fdb.tock)
    assert [e.cycle for e in raised] == [[("tick", 1), ("tock", 1)]] * 2  # type: ignore[attr-defined]


_started = threading.Event()


class Crossing(dm.Database):
    """A task computing ``x`` and a thread computing ``y`` that ask for each other."""

    @dm.query
    async def x(self, n: int) -> int:
        _started.set()
        await anyio.sleep(0.3)  # meanwhile the thread claims y and waits for x
        return await self.y.async_get(n) + 1

    @dm.query
    def y(self, n: int) -> int:
        return self.x(n) + 1


async def test_a_cycle_closed_by_a_task_waiting_for_a_thread() -> None:
    """The thread waits for the task's x; the task's wait for the thread's y closes the cycle:
    both raise CycleError, none hangs."""
    db = Crossing(backend="threads", workers=2)
    _started.clear()
    caught: list[BaseException] = []

    def thread() -> None:
        _started.wait(5)
        try:
            db.y(1)
        except dm.CycleError as exc:
            caught.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(anyio.to_thread.run_sync, thread)
        with pytest.raises(dm.CycleError) as raised:
            await db.x.async_get(1)
    assert raised.value.cycle == [("x", 1), ("y", 1)]
    assert len(caught) == 1 and caught[0].cycle == [("x", 1), ("y", 1)]  # type: ignore[attr-defined]


async def test_revalidation_reexecutes_only_what_changed_and_backdates(fdb: Fetcher) -> None:
    fdb.source["a.py"] = "abc"
    fdb.source["b.py"] = "xy"
    assert await fdb.report.async_get("a.py") == "a.py: 3 (3)"
    assert await fdb.report.async_get("b.py") == "b.py: 2 (2)"
    before = len(fdb.executed)
    # The same length, the same upper case: fetch and parse are backdated, and what reads
    # them (length, report) stays green: the bodies that ran are those that read the input.
    fdb.source["a.py"] = "ABC"
    assert await fdb.report.async_get("a.py") == "a.py: 3 (3)"
    assert await fdb.report.async_get("b.py") == "b.py: 2 (2)"
    assert sorted(fdb.executed[before:]) == [("fetch", "a.py"), ("parse", "a.py")]
    before = len(fdb.executed)
    fdb.source["a.py"] = "abcd"
    assert await fdb.report.async_get("a.py") == "a.py: 4 (4)"
    assert sorted(fdb.executed[before:]) == [
        ("fetch", "a.py"),
        ("length", "a.py"),
        ("parse", "a.py"),
        ("report", "a.py"),
    ]
    assert fdb.report("a.py") == "a.py: 4 (4)"  # a sync caller finds it valid


async def test_an_input_set_while_an_async_body_runs_cancels_it(fdb: Fetcher) -> None:
    """As for sync bodies: the body's next read raises dm.Cancelled, out of the call that
    started it; nothing is memoized, and asking again computes from the new input."""
    fdb.source["c.py"] = "old"
    raised: list[BaseException] = []

    async def ask() -> None:
        try:
            await fdb.reads_twice.async_get("c.py")
        except dm.Cancelled as exc:
            raised.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(ask)
        while _count(fdb, "reads_twice", "c.py") == 0:  # the body has read the input
            await anyio.sleep(0.005)
        fdb.source["c.py"] = "new"
    assert len(raised) == 1
    assert await fdb.reads_twice.async_get("c.py") == "new new"


async def test_a_sync_call_of_an_async_query_on_the_loop_thread_raises_and_memoizes_nothing(
    fdb: Fetcher,
) -> None:
    """Not even while another task computes it: the thread would wait for that task on the
    loop the task needs (serial: a sync body asked from async code runs on the loop's
    thread, so it cannot call an async query)."""
    fdb.source["a.py"] = "abc"
    with pytest.raises(RuntimeError, match=r"use `await db\.fetch\.async_get"):
        fdb.fetch("a.py")
    assert await fdb.fetch.async_get("a.py") == 3
    async with anyio.create_task_group() as group:
        group.start_soon(fdb.slow_async.async_get, 1)
        await anyio.sleep(0.02)  # it computes slow_async(1), asleep on this loop
        with pytest.raises(RuntimeError, match="without await"):
            fdb.slow_async(1)
    assert await fdb.slow_async.async_get(1) == 3
    async with anyio.create_task_group() as group:
        group.start_soon(fdb.slow_async.async_get, 2)
        await anyio.sleep(0.02)  # a task computes slow_async(2) on this loop...
        if fdb.backend.name == "serial":  # ...and a sync body here must not wait for it
            with pytest.raises(RuntimeError, match="without await"):
                await fdb.sync_slow.async_get(2)
        else:  # on a worker, it may
            assert await fdb.sync_slow.async_get(2) == 6
    assert await fdb.sync_slow.async_get(2) == 6
    if fdb.backend.name == "serial":
        fdb.source["b.py"] = "xy"
        with pytest.raises(RuntimeError, match="without await"):
            await fdb.sync_report.async_get("b.py")  # its body calls fetch on this thread
        assert fdb.sync_report.peek("b.py") is None  # not memoized: a sync caller computes it


def _trials(db: Fetcher) -> int:
    return 100 if db.backend.name == "processes" else 1000


async def test_cancelled_waits_and_computations_leave_the_query_usable(fdb: Fetcher) -> None:
    """Two tasks ask for the same key, each cancelled at a random moment (or not): whether it
    was waiting for the other or computing, the next caller gets the value, and the body ran
    to its end at most once. In one trial of three (parallel backends) a thread asks first,
    so a task waits for a thread's execution. 1,000 trials per event loop (100 on
    processes)."""
    rng = random.Random(7)
    cancelled = 0

    def in_thread(n: int) -> None:
        assert fdb.nap(n) == n + 1

    async def ask(n: int, deadline: float) -> None:
        nonlocal cancelled
        with anyio.move_on_after(deadline) as scope:
            assert await fdb.nap.async_get(n) == n + 1
        cancelled += scope.cancelled_caught

    trials = _trials(fdb)
    for n in range(trials):
        async with anyio.create_task_group() as group:
            if fdb.backend.parallel and rng.random() < 1 / 3:
                group.start_soon(anyio.to_thread.run_sync, in_thread, n)
            group.start_soon(ask, n, rng.random() * 0.003)
            group.start_soon(ask, n, rng.random() * 0.003 if rng.random() < 0.7 else 5)
        with anyio.fail_after(10):
            assert await fdb.nap.async_get(n) == n + 1  # the next caller succeeds
    assert cancelled  # the race was hit
    if fdb.backend.name != "processes":
        table = fdb._runtime.table
        assert not any(table._jobs)  # type: ignore[attr-defined]  # no claim left behind
        assert all(t.waiting is None and not t.stack for t in table._threads.values())  # type: ignore[attr-defined]
        assert all(t.thread[1] > 0 for t in table._threads.values())  # type: ignore[attr-defined]  # tasks' records dropped
        assert fdb.stats()["nap"].executions == trials


async def test_a_cancelled_computation_is_computed_by_its_waiter(fdb: Fetcher) -> None:
    """serial, threads: the owner task's claim is abandoned when it is cancelled while its
    body runs, and the task waiting for it computes it. processes: the body runs on a worker
    process, which a cancelled caller leaves to finish (it is memoized)."""
    results: list[int] = []

    async def waiter() -> None:
        await anyio.sleep(0.02)  # after the owner has claimed it
        results.append(await fdb.slow_async.async_get(9))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        with anyio.move_on_after(0.05):
            await fdb.slow_async.async_get(9)  # the owner, cancelled while it computes
    assert results == [27]
    in_process = fdb.backend.name != "processes"
    assert _count(fdb, "slow_async", 9) == (2 if in_process else 1)  # started, finished once
    assert fdb.stats()["slow_async"].executions == 1
    with anyio.move_on_after(0.02):  # cancelled with no one waiting
        await fdb.slow_async.async_get(10)
    if in_process:  # the claim was abandoned: nothing memoized, nothing running
        assert fdb.slow_async.peek(10) is None
    assert await fdb.slow_async.async_get(10) == 30
    with anyio.move_on_after(0.05):  # while a sync body it asked for runs on a worker
        await fdb.over_slow.async_get(5)
    assert await fdb.over_slow.async_get(5) == 11
    assert _count(fdb, "slow", 5) == 1  # it finished once, and was memoized


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_async_query as hybrid  # noqa: E402  (the workload of acceptance line 3)

_iterations = functools.cache(hybrid.calibrate)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_io_on_the_loop_and_cpu_on_the_workers(nested: bool) -> None:
    """Issue 13's line 3 (``benchmarks/bench_async_query.py`` measures it against the fixed
    bound): 8 tasks, each an async query sleeping 0.2 s then a sync query of ~0.1 s CPU, on
    threads(2): the sleeps overlap on the loop, the CPU bodies run on the workers (in
    parallel where the GIL is off). The bound here is the line's, with the CPU half measured
    in the same attempt on two plain threads (what this shared machine gives now: CPU / 2
    with two free cores and no GIL, all of it with the GIL), and 1.5x that, on the best of
    up to three attempts."""
    iterations = _iterations()
    await hybrid.serve(hybrid.fresh(1), nested, tasks=2)  # the workers started, code warm
    best = float("inf")
    for _ in range(3):
        cpu = hybrid.plain_threads(iterations, repeats=1)
        took, got = await hybrid.serve(hybrid.fresh(iterations), nested)
        assert got == hybrid.expected(iterations)
        best = min(best, took / (1.2 * max(hybrid.IO, cpu) + hybrid.IO))
        if best < 1.5:
            break
    assert best < 1.5


class Gated(Fetcher):
    """Queries that run until the test opens their gate: a cancellation lands while they run
    however slow the machine is, where a sleep of fixed length could end first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.async_gate = self.backend.create_event()
        self.sync_gate = self.backend.create_event()

    @dm.query
    async def held_async(self, n: int) -> int:
        self._note("held_async", n)
        with anyio.fail_after(JOIN_TIMEOUT):
            while not self.async_gate.is_set():  # (a serial Event's waits return at once)
                await anyio.sleep(0.005)
        return n * 3

    @dm.query
    def held(self, n: int) -> int:
        self._note("held", n)
        assert self.sync_gate.wait(JOIN_TIMEOUT)
        return n * 2

    @dm.query
    async def over_held(self, n: int) -> int:
        return await self.held.async_get(n) + 1


def test_asyncio_task_cancel_leaves_the_query_usable(dualmode_backend: str) -> None:
    """``asyncio.Task.cancel`` (not only anyio's cancel scopes), of a task waiting for a query
    and of the task computing it: the next caller gets the value."""
    import asyncio

    db = Gated(backend=dualmode_backend, workers=2)

    async def started(name: str, key: int) -> None:
        with anyio.fail_after(JOIN_TIMEOUT):
            while not _count(db, name, key):
                await asyncio.sleep(0.005)

    async def main() -> int:
        owner = asyncio.ensure_future(db.held_async.async_get(11))
        await started("held_async", 11)
        waiter = asyncio.ensure_future(db.held_async.async_get(11))
        await asyncio.sleep(0.02)  # it waits for the owner (if it has not started, no matter)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        owner.cancel()  # while it computes
        with pytest.raises(asyncio.CancelledError):
            await owner
        db.async_gate.set()
        return await db.held_async.async_get(11)

    async def nested() -> int:
        serial = db.backend.name == "serial"
        if serial:  # held runs inline, on the loop's thread: it must not wait
            db.sync_gate.set()
        owner = asyncio.ensure_future(db.over_held.async_get(4))
        await started("held", 4)  # over_held awaits held, running on a worker
        owner.cancel()
        db.sync_gate.set()  # the worker finishes held, whether the cancelled task waits or not
        if serial:  # held ran on this thread: over_held is done
            assert await owner == 9
        else:
            with pytest.raises(asyncio.CancelledError):
                await owner
        return await db.over_held.async_get(4)

    assert asyncio.run(main()) == 33
    assert asyncio.run(nested()) == 9
    assert _count(db, "held", 4) == 1  # it ran to its end once, and was memoized
    if db.backend.name != "processes":
        assert not any(db._runtime.table._jobs)  # type: ignore[attr-defined]


def test_event_loops_on_several_threads_share_one_execution_per_key(
    dualmode_parallel_backend: str,
) -> None:
    """Four threads, each running its own event loop (asyncio or trio) with eight tasks, and
    two plain threads ask for the same keys: each key executes once, and a task waiting for
    another loop's task is woken across threads."""
    db = Fetcher(backend=dualmode_parallel_backend, workers=2)
    keys = list(range(40))
    failures: list[BaseException] = []

    async def tasks() -> None:
        async def one(offset: int) -> None:
            for k in keys[offset:] + keys[:offset]:
                assert await db.nap.async_get(k) == k + 1

        async with anyio.create_task_group() as group:
            for i in range(8):
                group.start_soon(one, i * 5)

    def loop_thread(library: str) -> None:
        try:
            anyio.run(tasks, backend=library)
        except BaseException as exc:
            failures.append(exc)

    def plain_thread() -> None:
        try:
            for k in reversed(keys):
                assert db.nap(k) == k + 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(lib,)) for lib in ["asyncio", "trio"] * 2]
    threads += [threading.Thread(target=plain_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert sorted(k for name, k in db.executed if name == "nap") == keys
