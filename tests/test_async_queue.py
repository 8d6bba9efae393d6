"""``Queue.async_put`` / ``async_get``: one queue between threads and tasks, under asyncio and
trio (anyio's plugin), on every backend (docs/async.md)."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import anyio
import pytest
from _concurrency import JOIN_TIMEOUT, RaceWindow, start_thread

import dualmode as dm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

_DONE = "done"


def _items_on(backend: str) -> int:
    """100,000 on threads. On processes every put and get is a round trip to the coordinator
    and every task's wait a hop to a helper thread: 10,000 by default, and
    DUALMODE_HYBRID_ITEMS=100000 for the full count (issue 13's figure, in its note)."""
    if backend == "threads":
        return 100_000
    return int(os.environ.get("DUALMODE_HYBRID_ITEMS", "10000"))


async def test_items_go_from_threads_to_tasks_and_back(dualmode_parallel_backend: str) -> None:
    """2 producer threads -> 2 consumer tasks -> 2 collector threads, through bounded queues
    (so puts wait too): every item arrives once."""
    backend = dualmode_parallel_backend
    n = _items_on(backend)
    to_tasks = dm.Queue(maxsize=100, backend=backend)
    back = dm.Queue(maxsize=100, backend=backend)
    collected: list[list[int]] = [[], []]

    def produce(start: int) -> None:
        for i in range(start, n, 2):
            to_tasks.put(i)
        to_tasks.put(_DONE)

    def collect(index: int) -> None:
        while (item := back.get()) != _DONE:
            collected[index].append(item)

    async def consume() -> None:
        while (item := await to_tasks.async_get()) != _DONE:
            await back.async_put(item)
        await back.async_put(_DONE)

    threads = [start_thread(lambda i=i: produce(i)) for i in range(2)]
    threads += [start_thread(lambda i=i: collect(i)) for i in range(2)]
    with anyio.fail_after(240):
        async with anyio.create_task_group() as tasks:
            for _ in range(2):
                tasks.start_soon(consume)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
        assert not worker.is_alive()
    got = collected[0] + collected[1]
    assert len(got) == n
    assert sorted(got) == list(range(n))
    assert to_tasks.empty() and back.empty()


async def test_items_go_from_tasks_to_threads_on_every_backend(dualmode_backend: str) -> None:
    """Without waiting (serial has no one to wait for): the same queue serves both sides."""
    q = dm.Queue(backend=dualmode_backend)
    for i in range(5):
        await q.async_put(i)
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    q.put(5)
    assert [await q.async_get() for _ in range(3)] == [3, 4, 5]
    with pytest.raises(queue.Empty):
        await q.async_get(timeout=0)
    full = dm.Queue(1, backend=dualmode_backend)
    await full.async_put("x")
    with pytest.raises(queue.Full):
        await full.async_put("y", timeout=0.01)


async def test_serial_async_waits_no_one_could_end_raise_borrow_error() -> None:
    q = dm.Queue(1, backend="serial")
    with pytest.raises(dm.BorrowError, match="empty Queue"):
        await q.async_get()
    await q.async_put(1)
    with pytest.raises(dm.BorrowError, match="full Queue"):
        await q.async_put(2)


async def test_timeouts_raise_empty_and_full(dualmode_parallel_backend: str) -> None:
    q = dm.Queue(1, backend=dualmode_parallel_backend)
    with pytest.raises(queue.Empty):
        await q.async_get(timeout=0.05)
    await q.async_put(1)
    with pytest.raises(queue.Full):
        await q.async_put(2, timeout=0.05)
    assert await q.async_get() == 1
    with pytest.raises(ValueError, match=">= 0 seconds"):
        await q.async_get(timeout=-1)


async def test_shutdown_wakes_waiting_tasks(dualmode_parallel_backend: str) -> None:
    q = dm.Queue(backend=dualmode_parallel_backend)
    raised: list[str] = []

    async def getter() -> None:
        try:
            await q.async_get()
        except dm.QueueShutDown:
            raised.append("get")

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(getter)
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(q.shutdown)
    assert raised == ["get"] * 3
    with pytest.raises(dm.QueueShutDown):
        await q.async_put(1)


async def test_threads_queue_serves_getters_in_the_order_they_came() -> None:
    q = dm.Queue(backend="threads")
    got: list[tuple[str, Any]] = []

    def thread_getter(name: str) -> None:
        got.append((name, q.get(timeout=JOIN_TIMEOUT)))

    async def task_getter(name: str) -> None:
        got.append((name, await q.async_get()))

    threads = []
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for i in range(4):
                if i % 2:
                    threads.append(start_thread(lambda i=i: thread_getter(f"thread{i}")))
                else:
                    tasks.start_soon(task_getter, f"task{i}")
                while len(q._getters) <= i:  # type: ignore[attr-defined]
                    await anyio.sleep(0.001)
            for item in range(4):
                q.put(item)
    for worker in threads:
        worker.join(JOIN_TIMEOUT)
    assert sorted(got, key=lambda pair: pair[1]) == [
        ("task0", 0),
        ("thread1", 1),
        ("task2", 2),
        ("thread3", 3),
    ]


async def test_cancelled_gets_lose_no_item(dualmode_parallel_backend: str) -> None:
    """1,000 trials: a thread puts an item just as the waiting task is cancelled. Afterwards
    the item was got by the task or is still in the queue, exactly once."""
    q = dm.Queue(backend=dualmode_parallel_backend)
    race = RaceWindow(2, "got", "left")
    for trial in range(1000):
        putter = threading.Timer(race.delay(), q.put, (trial,))
        got: list[int] = []
        with anyio.move_on_after(race.delay()):
            putter.start()
            got.append(await q.async_get())
        putter.join(JOIN_TIMEOUT)
        if not got:
            with anyio.fail_after(JOIN_TIMEOUT):
                got.append(await q.async_get())  # still there, for the next caller
            race.record("left")
        else:
            race.record("got")
        assert got == [trial]
        assert q.empty()
    race.assert_both_sides_hit()


async def test_cancelled_puts_put_nothing_on_threads() -> None:
    """1,000 trials on a full queue: a thread makes room just as the waiting put is
    cancelled. Afterwards the item is in the queue once if the put finished, else not at all,
    and the room went to the next putter."""
    q = dm.Queue(1, backend="threads")
    race = RaceWindow(3, "put", "cancelled")
    for trial in range(1000):
        q.put("filler")
        taker = threading.Timer(race.delay(), q.get)
        done = False
        with anyio.move_on_after(race.delay()):
            taker.start()
            await q.async_put(trial)
            done = True
        taker.join(JOIN_TIMEOUT)
        contents = []
        while not q.empty():
            contents.append(q.get())
        assert contents == ([trial] if done else [])
        race.record("put" if done else "cancelled")
        q.put("next")  # the room is free for the next caller
        assert q.get() == "next"
    race.assert_both_sides_hit()
