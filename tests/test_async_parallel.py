"""Parallel iteration from async code: ``async_par_map``, ``async_par_for_each``,
``async_join`` and ``run_in_worker``, under asyncio and trio, on every backend: the results
and errors of the sync calls, the work on the backend's workers, the loop free meanwhile."""

from __future__ import annotations

import os
import threading
import time

import anyio
import pytest
from _concurrency import JOIN_TIMEOUT

import dualmode as dm

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def _fails_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x * 10


async def test_async_par_map_gives_par_maps_results(dualmode_backend: str) -> None:
    items = list(range(50))
    got = await dm.async_par_map(lambda x: x * x, items, backend=dualmode_backend)
    assert got == dm.par_map(lambda x: x * x, items, backend=dualmode_backend)
    assert got == [x * x for x in items]
    assert await dm.async_par_map(abs, [], backend=dualmode_backend) == []


async def test_async_par_map_raises_every_failure_in_item_order(dualmode_backend: str) -> None:
    with pytest.raises(dm.ParallelError) as raised:
        await dm.async_par_map(_fails_on_odd, range(7), chunksize=2, backend=dualmode_backend)
    assert raised.value.indices == [1, 3, 5]
    assert [str(e) for e in raised.value.exceptions] == ["odd 1", "odd 3", "odd 5"]
    with pytest.raises(dm.ParallelError) as raised:
        await dm.async_par_for_each(_fails_on_odd, range(4), backend=dualmode_backend)
    assert raised.value.indices == [1, 3]


async def test_bad_arguments_raise_before_any_work(dualmode_backend: str) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        await dm.async_par_map(3, [1], backend=dualmode_backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an iterable"):
        await dm.async_par_map(abs, 3, backend=dualmode_backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunksize"):
        await dm.async_par_map(abs, [1], chunksize=0, backend=dualmode_backend)
    with pytest.raises(TypeError, match="must be callable"):
        await dm.run_in_worker(3, backend=dualmode_backend)  # type: ignore[arg-type]


async def test_progress_reaches_the_total(dualmode_backend: str) -> None:
    seen: list[tuple[int, int]] = []
    await dm.async_par_for_each(
        abs, range(20), chunksize=3, progress=lambda *p: seen.append(p), backend=dualmode_backend
    )
    assert seen[-1] == (20, 20)


async def test_async_join_and_run_in_worker(dualmode_backend: str) -> None:
    assert await dm.async_join(lambda: 1, lambda: "b", backend=dualmode_backend) == (1, "b")
    with pytest.raises(dm.ParallelError) as raised:
        await dm.async_join(lambda: _fails_on_odd(1), lambda: 2, backend=dualmode_backend)
    assert raised.value.indices == [0]
    assert await dm.run_in_worker(divmod, 7, 2, backend=dualmode_backend) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        await dm.run_in_worker(divmod, 1, 0, backend=dualmode_backend)


async def test_work_runs_on_the_workers_while_the_loop_runs_on(
    dualmode_parallel_backend: str,
) -> None:
    backend = dualmode_parallel_backend
    loop_thread, loop_pid = threading.get_ident(), os.getpid()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    def where(x: int) -> tuple[int, int]:
        time.sleep(0.1)
        return os.getpid(), threading.get_ident()

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            places = await dm.async_par_map(where, range(4), chunksize=1, backend=backend)
            worker = await dm.run_in_worker(
                lambda: (os.getpid(), threading.get_ident()), backend=backend
            )
            tasks.cancel_scope.cancel()
    assert all(place != (loop_pid, loop_thread) for place in [*places, worker])
    assert ticks >= 10  # the loop turned while the workers slept


async def test_a_cancelled_map_runs_no_more_chunks(dualmode_parallel_backend: str) -> None:
    """threads: chunks not started are cancelled. (processes: what was sent to a worker
    runs; only the waiting stops at once.)"""
    backend = dualmode_parallel_backend
    ran = dm.AtomicInt(0, backend=backend)

    def slow(x: int) -> None:
        ran.fetch_add(1)
        time.sleep(0.05)

    started = time.monotonic()
    with anyio.move_on_after(0.1):
        await dm.async_par_for_each(slow, range(200), chunksize=1, backend=backend)
    assert time.monotonic() - started < 1.0  # the wait stopped at once
    if backend == "threads":
        time.sleep(0.2)
        assert ran.load() < 50
    # The backend is whole afterwards.
    assert await dm.async_par_map(abs, [-1, -2], backend=backend) == [1, 2]
