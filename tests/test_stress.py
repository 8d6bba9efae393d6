"""Races under stress, on every parallel backend (threads and processes).

Each test starts its threads together on a ``threading.Barrier`` and repeats for many rounds,
so a race shows up as a wrong count rather than by luck. The threads are this process's: on
threads they share the primitives directly; on processes each thread has its own connection
to the coordinator (where a primitive's state lives), and the client-side code the processes
backend runs itself (``Condition.wait_for``'s loop, the FreezeLock read cache, ``ShardedDict``'s
``get``/``pop`` defaults, ``WorkerLocal``'s per-process value) races as it does for any caller.
The ``stress`` fixture (tests/conftest.py) gives the backend and scales the operations and
rounds to it (:class:`_concurrency.Stress`). Every test has a timeout, so a deadlock fails
instead of hanging; nothing asserts on elapsed time (the CI machines are small and shared).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from _concurrency import (
    JOIN_TIMEOUT,
    Stress,
    run_threads,
    start_thread,
    stress_timeout,
    wait_until,
)

import dualmode as dm

pytestmark = [pytest.mark.stress, pytest.mark.timeout(stress_timeout(120))]

ROUNDS = 30


def test_free_threaded_build_really_runs_without_the_gil() -> None:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        pytest.skip("a GIL build: the stress tests below only interleave at the GIL's pace")
    # An extension module without free-threading support turns the GIL back on at import.
    assert not sys._is_gil_enabled(), "the GIL was re-enabled, so these stress tests prove less"


def test_atomic_int_fetch_add_is_exact(stress: Stress) -> None:
    per_thread = stress.ops(2000)

    def one_round() -> None:
        atomic = dm.AtomicInt(0, backend=stress.backend)
        seen = run_threads(
            stress.threads, lambda _: [atomic.fetch_add(1) for _ in range(per_thread)]
        )
        assert atomic.load() == stress.threads * per_thread
        # Every call saw a distinct previous value: no two increments overlapped.
        assert sorted(v for part in seen for v in part) == list(range(stress.threads * per_thread))

    stress.repeat(ROUNDS, one_round)


def test_atomic_int_compare_exchange_loop(stress: Stress) -> None:
    per_thread = stress.ops(1000)

    def one_round() -> None:
        atomic = dm.AtomicInt(0, backend=stress.backend)

        def increment(_: int) -> None:
            for _ in range(per_thread):
                current = atomic.load()
                while (found := atomic.compare_exchange(current, current + 1)) != current:
                    current = found

        run_threads(stress.threads, increment)
        assert atomic.load() == stress.threads * per_thread

    stress.repeat(ROUNDS, one_round)


def test_sharded_dict_loses_no_update(stress: Stress) -> None:
    counters = 8
    per_thread = stress.ops(512, multiple_of=counters)  # every counter gets the same share

    def one_round() -> None:
        shards = dm.ShardedDict(backend=stress.backend)

        def new_atomic() -> Any:
            return dm.AtomicInt(0, backend=stress.backend)

        def new_mutex() -> Any:
            return dm.Mutex(0, backend=stress.backend)

        def work(t: int) -> None:
            for i in range(per_thread):
                shards[(t, i)] = i
                key = i % counters
                shards.get_or_insert_with(("atomic", key), new_atomic).fetch_add(1)
                with shards.get_or_insert_with(("mutex", key), new_mutex).lock() as guard:
                    guard.value += 1
                shards.setdefault(("first", key), t)
                # every thread races to insert each of these: all must share one counter
                shards.get_or_insert_with(("shared", i), new_atomic).fetch_add(1)

        run_threads(stress.threads, work)
        entries = dict(shards.items())
        assert len(shards) == len(entries) == (stress.threads + 1) * per_thread + 3 * counters
        assert all(entries[(t, i)] == i for t in range(stress.threads) for i in range(per_thread))
        assert all(entries[("shared", i)].load() == stress.threads for i in range(per_thread))
        expected = stress.threads * per_thread // counters
        for key in range(counters):
            assert entries[("atomic", key)].load() == expected
            with entries[("mutex", key)].lock() as guard:
                assert guard.value == expected
            assert entries[("first", key)] in range(stress.threads)

    stress.repeat(ROUNDS, one_round)


def test_sharded_dict_pop_hands_each_key_out_once(stress: Stress) -> None:
    keys = stress.ops(2000)
    gone = object()  # a default that stays here (on processes it never travels)

    def one_round() -> None:
        shards = dm.ShardedDict(backend=stress.backend)
        for i in range(keys):
            shards[i] = i
        popped = run_threads(
            stress.threads, lambda _: [k for k in range(keys) if shards.pop(k, gone) is not gone]
        )
        assert Counter(k for part in popped for k in part) == Counter(range(keys))
        assert len(shards) == 0

    stress.repeat(ROUNDS // 2, one_round)


def test_rwlock_writers_exclude_everyone(stress: Stress) -> None:
    attempts = stress.ops(150, at_least=40)

    def one_round() -> None:
        rw = dm.RwLock(backend=stress.backend)
        state_lock = threading.Lock()
        inside = Counter[str]()
        violations: list[dict[str, int]] = []

        def hold(role: str) -> None:
            with state_lock:
                inside[role] += 1
                if inside["write"] > 1 or (inside["write"] and inside["read"]):
                    violations.append(dict(inside))
            time.sleep(0)  # let others try to come in
            with state_lock:
                inside[role] -= 1

        def work(t: int) -> None:
            for i in range(attempts):
                role = "write" if (i + t) % 4 == 0 else "read"
                acquire = rw.acquire_write if role == "write" else rw.acquire_read
                release = rw.release_write if role == "write" else rw.release_read
                if i % 10 == 5:  # mix in timed and non-blocking attempts
                    if not (acquire(timeout=0.001) if i % 20 == 5 else acquire(False)):
                        continue
                else:
                    acquire()
                hold(role)
                release()

        run_threads(stress.threads, work)
        assert violations == []
        assert +inside == Counter()
        assert rw.acquire_write(False)  # the lock ends free
        rw.release_write()

    stress.repeat(ROUNDS, one_round)


def test_rwlock_writer_not_starved_by_streaming_readers(stress: Stress) -> None:
    def one_round() -> None:
        rw = dm.RwLock(backend=stress.backend)
        stop = threading.Event()
        reads = dm.AtomicInt(0, backend=stress.backend)

        def read_until_stopped() -> None:
            while not stop.is_set():
                with rw.read():
                    reads.fetch_add(1)
                    time.sleep(0.0005)  # readers overlap: the lock is never reader-free

        readers = [start_thread(read_until_stopped) for _ in range(stress.threads - 1)]
        try:
            wait_until(lambda: reads.load() > 20)
            # Without writer preference this would wait for as long as readers keep coming.
            assert rw.acquire_write(timeout=JOIN_TIMEOUT)
            rw.release_write()
        finally:
            stop.set()
            for reader in readers:
                reader.join(JOIN_TIMEOUT)

    stress.repeat(5, one_round)


def test_once_cell_runs_fn_exactly_once(stress: Stress) -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend=stress.backend)
        calls = dm.AtomicInt(0, backend=stress.backend)

        def init() -> str:
            calls.fetch_add(1)
            time.sleep(0.001)  # widen the window for racers
            return uuid.uuid4().hex  # which call made the value (a copy, on processes)

        values = run_threads(8, lambda _: cell.get_or_init(init))
        assert calls.load() == 1
        assert values == [values[0]] * 8 == [cell.get()] * 8

    stress.repeat(ROUNDS, one_round)


def test_once_cell_failed_init_lets_the_next_caller_try(stress: Stress) -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend=stress.backend)
        calls = dm.AtomicInt(0, backend=stress.backend)

        def init() -> str:
            if calls.fetch_add(1) == 0:
                time.sleep(0.001)
                raise KeyError("first")
            return "ok"

        def attempt(_: int) -> str:
            try:
                return cell.get_or_init(init)
            except KeyError:
                return "failed"

        results = run_threads(8, attempt)
        assert calls.load() == 2
        assert Counter(results) == {"failed": 1, "ok": 7}

    stress.repeat(ROUNDS, one_round)


def test_once_cell_set_races_get_or_init(stress: Stress) -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend=stress.backend)

        def race(t: int) -> tuple[str, object]:
            if t % 2:
                return ("set", cell.set(t))
            return ("init", cell.get_or_init(lambda: t))

        results = run_threads(stress.threads, race)
        value = cell.get()
        stored = [r for r in results if r == ("set", True)]
        assert len(stored) <= 1
        assert value % 2 == (1 if stored else 0)  # setters store odd, initialisers even
        assert all(got == value for kind, got in results if kind == "init")

    stress.repeat(4 * ROUNDS, one_round)  # one call per thread: rounds are cheap


def test_once_cell_set_after_abandon_wakes_every_waiter(stress: Stress) -> None:
    def one_round() -> None:
        cell = dm.OnceCell(backend=stress.backend)
        assert cell._claim() == (False, None)  # this thread initialises...
        waiting = dm.AtomicInt(0, backend=stress.backend)

        def wait_for_value(t: int) -> object:
            waiting.fetch_add(1)
            return cell.get_or_init(lambda: t)

        results: list[object] = []
        runner = start_thread(lambda: results.extend(run_threads(stress.threads, wait_for_value)))
        wait_until(lambda: waiting.load() == stress.threads)
        time.sleep(0.001)  # most of them are asleep in the cell by now
        cell._abandon()  # ...gives up, which wakes one waiter,
        cell.set("set")  # and a set() that beats it must wake the rest
        runner.join(JOIN_TIMEOUT)
        assert not runner.is_alive()
        assert results == [cell.get()] * stress.threads

    stress.repeat(ROUNDS // 2, one_round)


def test_worker_local_one_value_per_worker(stress: Stress) -> None:
    """Threads racing into a WorkerLocal's first ``get()`` make one value per worker, once,
    and each uses its own worker's: on threads a worker is a thread; on processes it is a
    process, so this process's threads share one value."""
    worker_of = os.getpid if stress.backend == "processes" else threading.get_ident

    def one_round() -> None:
        made = dm.AtomicInt(0, backend=stress.backend)

        def factory() -> list[int]:
            made.fetch_add(1)
            return []

        local = dm.WorkerLocal(factory, backend=stress.backend)

        def work(t: int) -> tuple[int, int]:
            for _ in range(50):
                local.get().append(t)
            return worker_of(), id(local.get())

        seen = run_threads(stress.threads, work)
        workers = {worker for worker, _ in seen}
        assert made.load() == len(workers)
        assert len({value for _, value in seen}) == len(workers)  # one value per worker
        collected = local.collect()
        assert sorted(map(id, collected)) == sorted({value for _, value in seen})
        assert sorted(x for value in collected for x in value) == sorted(
            t for t in range(stress.threads) for _ in range(50)
        )

    stress.repeat(ROUNDS, one_round)


def test_queue_producers_consumers_then_shutdown(stress: Stress) -> None:
    producers, per_producer = 2, stress.ops(300)

    def one_round() -> None:
        q = dm.Queue(4, backend=stress.backend)  # small, so puts block too
        produced = dm.AtomicInt(0, backend=stress.backend)

        def work(t: int) -> list[int]:
            if t < producers:
                for i in range(per_producer):
                    q.put(t * per_producer + i)
                produced.fetch_add(1)
                return []
            got = []
            while True:
                try:
                    got.append(q.get())
                except dm.QueueShutDown:
                    return got
                q.task_done()

        def shut_down_when_drained() -> None:
            wait_until(lambda: produced.load() == producers)
            q.join()
            q.shutdown()

        closer = start_thread(shut_down_when_drained)
        parts = run_threads(stress.threads, work)
        closer.join(JOIN_TIMEOUT)
        consumed = parts[producers:]
        assert sorted(v for part in consumed for v in part) == list(range(producers * per_producer))
        for part in consumed:  # FIFO: each consumer saw each producer's items in order
            for p in range(producers):
                mine = [v for v in part if v // per_producer == p]
                assert mine == sorted(mine)

    stress.repeat(ROUNDS // 2, one_round)


def test_barrier_every_party_gets_a_distinct_index(stress: Stress) -> None:
    cycles = 10
    actions = dm.AtomicInt(0, backend=stress.backend)
    # on processes the action runs in the coordinator, where it reaches the same AtomicInt
    barrier = dm.Barrier(
        stress.threads, action=lambda: actions.fetch_add(1), backend=stress.backend
    )

    def one_round() -> None:
        indices = run_threads(stress.threads, lambda _: [barrier.wait() for _ in range(cycles)])
        for cycle in range(cycles):
            assert sorted(part[cycle] for part in indices) == list(range(stress.threads))

    stress.repeat(ROUNDS, one_round)
    assert actions.load() == stress.rounds(ROUNDS) * cycles
    assert not barrier.broken and barrier.n_waiting == 0


def test_barrier_abort_breaks_every_waiter(stress: Stress) -> None:
    def one_round() -> None:
        barrier = dm.Barrier(stress.threads + 1, backend=stress.backend)

        def wait(_: int) -> str:
            try:
                barrier.wait()
            except dm.BrokenBarrierError:
                return "broken"
            return "passed"

        def abort_when_all_wait() -> None:
            wait_until(lambda: barrier.n_waiting == stress.threads)
            barrier.abort()

        aborter = start_thread(abort_when_all_wait)
        assert run_threads(stress.threads, wait) == ["broken"] * stress.threads
        aborter.join(JOIN_TIMEOUT)

    stress.repeat(ROUNDS // 2, one_round)


def test_condition_wait_for_delivers_every_item(stress: Stress) -> None:
    """One producer notifies per item; consumers ``wait_for`` an item or the end (on
    processes that loop, and its predicate, run in the consumer's own thread here)."""
    total = stress.ops(400, at_least=100)

    def one_round() -> None:
        cond = dm.Condition(backend=stress.backend)
        items: list[int] = []
        done = [False]

        def work(t: int) -> list[int]:
            if t == 0:
                for i in range(total):
                    with cond:
                        items.append(i)
                        cond.notify()
                with cond:
                    done[0] = True
                    cond.notify_all()
                return []
            got = []
            while True:
                with cond:
                    cond.wait_for(lambda: items or done[0])
                    if not items:
                        return got
                    got.append(items.pop(0))

        parts = run_threads(stress.threads, work)
        assert sorted(v for part in parts for v in part) == list(range(total))

    stress.repeat(ROUNDS // 2, one_round)


def test_semaphore_bounds_concurrency(stress: Stress) -> None:
    entries = stress.ops(200, at_least=50)

    def one_round() -> None:
        sem = dm.BoundedSemaphore(2, backend=stress.backend)
        inside = dm.AtomicInt(0, backend=stress.backend)
        over: list[int] = []

        def work(_: int) -> None:
            for _ in range(entries):
                with sem:
                    now = inside.fetch_add(1) + 1
                    if now > 2:
                        over.append(now)
                    inside.fetch_sub(1)

        run_threads(stress.threads, work)
        assert over == []
        with pytest.raises(ValueError):
            sem.release()  # every unit came back

    stress.repeat(ROUNDS // 2, one_round)


def test_freeze_lock_nothing_changes_after_freeze(stress: Stress) -> None:
    """Reads race a writer and the freeze: a read that starts after ``frozen`` is seen true
    gets the final value (on processes: from the read cache, filled by whichever thread
    first saw the lock frozen)."""
    steps = stress.ops(300, at_least=60, multiple_of=2)

    def one_round() -> None:
        fl = dm.FreezeLock(0, backend=stress.backend)

        def work(t: int) -> list[tuple[bool, int]]:
            seen = []  # (frozen before this read?, value read)
            for i in range(steps):
                if t == 0 and i == steps // 2:
                    fl.freeze()
                elif t == 1:
                    try:
                        with fl.write() as guard:
                            guard.value = i
                    except dm.BorrowError:
                        assert fl.frozen
                frozen = fl.frozen
                seen.append((frozen, fl.read()))
            return seen

        parts = run_threads(stress.threads, work)
        final = fl.read()
        assert fl.frozen
        assert all(value == final for part in parts for frozen, value in part if frozen)

    stress.repeat(ROUNDS // 2, one_round)
