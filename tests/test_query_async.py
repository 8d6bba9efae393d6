"""``BoundQuery.async_get``: queries from async code, under asyncio and trio (anyio's plugin)."""

from __future__ import annotations

import os
import threading
import time

import anyio
import pytest

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
