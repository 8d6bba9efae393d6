"""User code, written as someone who installed dualmode writes it: every public primitive built
as docs/primitives.md shows, with its documented arguments, then used.

Two tools read this file. The ``typecheck`` nox session runs ``mypy --strict`` on it from
outside the checkout, against the installed package, so it sees dualmode as a user's type
checker does; each ``assert_type`` pins what a call is typed as, and each ``type: ignore``
pins an error the checker must report (strict mode flags an ignore that is not needed).
pytest runs it on every backend, so every call typed here also works as typed.
"""

from __future__ import annotations

from typing import Any, assert_type

import pytest

import dualmode as dm


def locks() -> None:
    lock = dm.Lock()
    assert_type(lock, dm.Lock)
    with lock:
        assert_type(lock.locked(), bool)
    assert_type(lock.acquire(), bool)
    lock.release()
    assert_type(lock.acquire(blocking=False), bool)
    lock.release()
    assert_type(lock.acquire(True, 0.5), bool)
    lock.release()

    rlock = dm.RLock()
    assert_type(rlock, dm.RLock)
    with rlock, rlock:
        assert_type(rlock.acquire(timeout=0.5), bool)
        rlock.release()


def semaphores() -> None:
    semaphore = dm.Semaphore(2)
    assert_type(semaphore, dm.Semaphore)
    with semaphore:
        assert_type(semaphore.acquire(blocking=False), bool)
    semaphore.release(1)
    assert_type(dm.Semaphore(), dm.Semaphore)
    assert_type(dm.Semaphore(value=0).acquire(timeout=0.01), bool)

    bounded = dm.BoundedSemaphore(1)
    assert_type(bounded, dm.BoundedSemaphore)
    with bounded:
        pass
    with pytest.raises(ValueError):
        bounded.release()


def events_and_conditions() -> None:
    event = dm.Event()
    assert_type(event, dm.Event)
    assert_type(event.wait(0.01), bool)
    event.set()
    assert_type(event.is_set(), bool)
    assert_type(event.wait(), bool)
    event.clear()

    condition = dm.Condition()
    assert_type(condition, dm.Condition)
    with condition:
        condition.notify()
        condition.notify(2)
        condition.notify_all()
        assert_type(condition.wait(0.01), bool)
        assert_type(condition.wait_for(lambda: 3, timeout=0.01), int)
    assert_type(dm.Condition(dm.Lock()), dm.Condition)
    with dm.Condition(lock=dm.RLock()) as entered:
        assert_type(entered, bool)


def barriers() -> None:
    barrier = dm.Barrier(1)
    assert_type(barrier, dm.Barrier)
    assert_type(barrier.wait(), int)
    assert_type(barrier.wait(timeout=1.0), int)
    assert_type(barrier.parties, int)
    assert_type(barrier.n_waiting, int)
    assert_type(barrier.broken, bool)
    barrier.reset()
    barrier.abort()
    assert_type(dm.Barrier(1, action=lambda: None, timeout=5.0), dm.Barrier)
    assert_type(dm.Barrier(1, None, 5), dm.Barrier)


def rwlocks() -> None:
    rw = dm.RwLock()
    assert_type(rw, dm.RwLock)
    with rw.read(), rw.read():
        pass
    with rw.write():
        pass
    assert_type(rw.acquire_read(), bool)
    rw.release_read()
    assert_type(rw.acquire_write(blocking=False), bool)
    rw.release_write()


def values() -> None:
    mutex = dm.Mutex(0)
    assert_type(mutex, dm.Mutex)
    with mutex.lock() as guard:
        assert_type(guard, dm.MutexGuard[Any])
        guard.value = guard.value + 1
    late = mutex.try_lock()
    assert late is not None
    late.release()
    assert_type(dm.Mutex(), dm.Mutex)

    cell = dm.OnceCell()
    assert_type(cell, dm.OnceCell)
    assert_type(cell.get_or_init(lambda: 42), int)
    assert cell.get() == 42 and cell.is_set() and not cell.set(43)

    frozen = dm.FreezeLock({"a": 1})
    assert_type(frozen, dm.FreezeLock)
    with frozen.write() as writer:
        writer.value = {**writer.value, "b": 2}
    assert_type(frozen.frozen, bool)
    assert frozen.freeze() == frozen.read() == {"a": 1, "b": 2}
    assert_type(dm.FreezeLock(), dm.FreezeLock)


def atomics_and_maps() -> None:
    counter = dm.AtomicInt(0)
    assert_type(counter, dm.AtomicInt)
    assert_type(counter.fetch_add(2), int)
    assert_type(counter.fetch_sub(1), int)
    assert_type(counter.swap(5), int)
    assert_type(counter.compare_exchange(5, 6), int)
    counter.store(7)
    assert_type(counter.load(), int)
    assert_type(dm.AtomicInt(), dm.AtomicInt)

    local = dm.WorkerLocal(list)
    assert_type(local, dm.WorkerLocal)
    local.get().append(1)
    assert_type(local.collect(), list[Any])

    table = dm.ShardedDict()
    assert_type(table, dm.ShardedDict)
    table["a"] = 1
    table.set("b", 2)
    assert table.get("a") == table["a"] == 1 and "b" in table
    table.setdefault("c", 3)
    assert_type(table.get_or_insert_with("d", lambda: "four"), str)
    assert_type(len(table), int)
    assert sorted(table.items()) == [("a", 1), ("b", 2), ("c", 3), ("d", "four")]
    assert table.pop("a") == 1 and table.pop("a", None) is None


def queues() -> None:
    queue = dm.Queue(maxsize=2)
    assert_type(queue, dm.Queue)
    queue.put(1)
    queue.put_nowait(2)
    assert_type(queue.full(), bool)
    assert_type(queue.qsize(), int)
    assert queue.get() == 1 and queue.get_nowait() == 2
    queue.task_done()
    queue.task_done()
    queue.join()
    assert_type(queue.empty(), bool)
    queue.shutdown(immediate=True)
    assert_type(dm.Queue(), dm.Queue)


USER_CODE = [locks, semaphores, events_and_conditions, barriers, rwlocks, values]
USER_CODE += [atomics_and_maps, queues]


def explicit_backend(name: str) -> None:
    """Every primitive built with ``backend=``, a name or a Backend, belongs to that backend."""
    chosen = dm.current()
    built = [
        dm.Lock(backend=name),
        dm.RLock(backend=chosen),
        dm.Semaphore(2, backend=name),
        dm.BoundedSemaphore(value=2, backend=name),
        dm.Event(backend=name),
        dm.Condition(backend=name),
        dm.Condition(dm.Lock(backend=name), backend=name),
        dm.Barrier(2, backend=name),
        dm.RwLock(backend=name),
        dm.Mutex(0, backend=name),
        dm.OnceCell(backend=name),
        dm.AtomicInt(0, backend=name),
        dm.WorkerLocal(dict, backend=name),
        dm.ShardedDict(backend=name),
        dm.FreezeLock((), backend=name),
        dm.Queue(0, backend=name),
    ]
    assert [obj.backend.name for obj in built] == [name] * len(built)


def misuse_is_caught(name: str) -> None:
    """What a type checker refuses, the call refuses too (the ignores are strict mypy's)."""
    with pytest.raises(TypeError, match="the backend is keyword-only"):
        dm.Lock(name)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="the backend is keyword-only"):
        dm.Semaphore(2, name)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="value must be an int"):
        dm.Semaphore("2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="factory must be a callable"):
        dm.WorkerLocal(3)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("run", USER_CODE, ids=[fn.__name__ for fn in USER_CODE])
def test_user_code_runs_as_typed(dualmode_backend: str, run: Any) -> None:
    run()


def test_backend_keyword(dualmode_backend: str) -> None:
    explicit_backend(dualmode_backend)
    misuse_is_caught(dualmode_backend)


def test_primitives_are_the_public_classes(dualmode_backend: str) -> None:
    """What the type checker is told (``dm.Lock()`` is a ``dm.Lock``) holds at run time."""
    for cls in (dm.Lock, dm.Event, dm.Queue, dm.OnceCell):
        obj = cls()
        assert isinstance(obj, cls) and type(obj) is not cls


def _double(x: int) -> int:
    return 2 * x


async def _answer() -> int:
    return 42


async def async_twins(backend: str) -> None:
    lock = dm.Lock(backend=backend)
    async with lock:
        assert_type(lock.locked(), bool)
    assert_type(await lock.async_acquire(timeout=0.5), bool)
    lock.release()
    semaphore = dm.Semaphore(1, backend=backend)
    async with semaphore:
        pass
    assert_type(await semaphore.async_acquire(), bool)
    semaphore.release()
    event = dm.Event(backend=backend)
    event.set()
    assert_type(await event.async_wait(timeout=0.5), bool)
    queue = dm.Queue(backend=backend)
    await queue.async_put(1)
    assert_type(await queue.async_get(timeout=0.5), Any)
    mutex = dm.Mutex(0, backend=backend)
    async with mutex.async_lock() as guard:
        assert_type(guard, dm.MutexGuard[Any])
        guard.value = 1
    rw = dm.RwLock(backend=backend)
    async with rw.async_read():
        pass
    async with rw.async_write(timeout=0.5):
        pass
    rlock = dm.RLock(backend=backend)
    async with rlock:
        assert_type(await rlock.async_acquire(timeout=0.5), bool)
        rlock.release()
    condition = dm.Condition(backend=backend)
    async with condition:
        assert_type(await condition.async_wait(timeout=0), bool)
        assert_type(await condition.async_wait_for(lambda: 3, timeout=0), int)
        assert_type(await condition.async_acquire(timeout=0.5), bool)
        condition.release()
    freeze = dm.FreezeLock(1, backend=backend)
    assert_type(await freeze.async_read(timeout=0.5), Any)
    async with freeze.async_write(timeout=0.5) as written:
        assert_type(written, dm.WriteGuard[Any])
        written.value = 2
    held = await freeze.async_write()
    held.release()
    cell = dm.OnceCell(backend=backend)
    assert_type(await cell.async_get_or_init(_answer), int)  # an async initialiser
    assert_type(await dm.OnceCell(backend=backend).async_get_or_init(lambda: "s", timeout=1), str)
    assert_type(await dm.async_par_map(_double, [-1], backend=backend), list[int])
    assert_type(await dm.run_in_worker(_double, 7, backend=backend), int)
    assert_type(await dm.async_join(lambda: 1, lambda: "b", backend=backend), tuple[int, str])


def test_async_twins_work_as_typed(dualmode_backend: str) -> None:
    import anyio

    anyio.run(async_twins, dualmode_backend)


class Typed(dm.Database):
    """Queries as docs/queries.md declares them: a sync one and an async one."""

    @dm.query
    def double(self, n: int) -> int:
        return 2 * n

    @dm.query
    async def fetch(self, n: int) -> str:
        import anyio

        await anyio.sleep(0)
        return str(n)


def sync_queries(backend: str) -> None:
    db = Typed(backend=backend)
    assert_type(db.double(2), int)
    assert_type(db.fetch(3), str)  # an async query called from sync code: its value


async def async_queries(backend: str) -> None:
    db = Typed(backend=backend)
    assert_type(await db.fetch.async_get(3), str)
    assert_type(await db.double.async_get(2), int)


def test_queries_work_as_typed(dualmode_backend: str) -> None:
    import anyio

    sync_queries(dualmode_backend)
    anyio.run(async_queries, dualmode_backend)
