"""The processes backend: primitives shared by spawned processes through one coordinator.

Children are started with ``spawn`` and run targets from ``_processes_workers`` (spawn imports
them by module name). One backend serves the module; tests that kill or close a coordinator
make their own. Every test has a timeout, so a deadlock fails instead of hanging, and nothing
asserts on elapsed time.
"""

from __future__ import annotations

import faulthandler
import functools
import gc
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import pytest

import dualmode as dm
from dualmode import by_value
from dualmode.backends.processes import ProcessesBackend

sys.path.insert(0, os.path.dirname(__file__))  # whatever pytest's import mode, children see it
import _processes_workers as w
from _concurrency import gone

pytestmark = pytest.mark.timeout(90)

CTX = multiprocessing.get_context("spawn")
WAIT = 60.0  # seconds: generous, the machines are small and shared


@pytest.fixture(scope="module")
def backend() -> Iterator[ProcessesBackend]:
    b = ProcessesBackend(workers=2)
    yield b
    b.close()


def start(target: Callable[..., object], *args: Any) -> BaseProcess:
    process = CTX.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def finish(*processes: BaseProcess) -> None:
    for process in processes:
        process.join(WAIT)
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"{process.name} did not finish within {WAIT} s")
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def wait_gone(pid: int, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- 1-3: the acceptance basics -----------------------------------------------------------------


@pytest.mark.parametrize("repeat", range(3))
def test_atomic_int_is_exact_across_processes(backend: ProcessesBackend, repeat: int) -> None:
    counter = dm.AtomicInt(0, backend=backend)
    finish(*[start(w.add_many, counter, 1000) for _ in range(3)])
    assert counter.load() == 3000


@pytest.mark.parametrize("repeat", range(3))
def test_mutex_is_exclusive_across_processes(backend: ProcessesBackend, repeat: int) -> None:
    mutex = dm.Mutex(0, backend=backend)
    finish(*[start(w.mutex_add, mutex, 300) for _ in range(3)])
    with mutex.lock() as guard:
        assert guard.value == 900


def test_event_set_in_child_is_seen_by_parent(backend: ProcessesBackend) -> None:
    event = dm.Event(backend=backend)
    child = start(w.set_event, event)
    assert event.wait(timeout=WAIT)
    finish(child)
    assert event.is_set()


# -- 4: every primitive pickles and works in a spawned child -------------------------------------


def test_lock(backend: ProcessesBackend) -> None:
    lock, out = dm.Lock(backend=backend), dm.Queue(backend=backend)
    lock.acquire()
    child = start(w.lock_probe, lock, out)
    assert out.get(timeout=WAIT) is False  # held here, so not there
    lock.release()
    assert out.get(timeout=WAIT) is True
    assert out.get(timeout=WAIT) is True  # locked() seen from the child while it holds it
    finish(child)
    assert not lock.locked()


def test_rlock(backend: ProcessesBackend) -> None:
    rlock, out, go = dm.RLock(backend=backend), dm.Queue(backend=backend), dm.Event(backend=backend)
    child = start(w.rlock_hold, rlock, out, go)
    assert out.get(timeout=WAIT) == "held"
    assert not rlock.acquire(blocking=False)  # owned by the child's thread, not ours
    go.set()
    assert rlock.acquire(timeout=WAIT)
    rlock.release()
    assert out.get(timeout=WAIT) == "RuntimeError"
    finish(child)


def test_semaphores(backend: ProcessesBackend) -> None:
    sem = dm.Semaphore(2, backend=backend)
    bounded = dm.BoundedSemaphore(1, backend=backend)
    out = dm.Queue(backend=backend)
    finish(start(w.semaphores, sem, bounded, out))
    assert out.get(timeout=WAIT) == [True, True, False]
    assert out.get(timeout=WAIT) == "ValueError"
    assert sem.acquire(blocking=False) and sem.acquire(blocking=False)


def test_condition_notify_across_processes(backend: ProcessesBackend) -> None:
    cond, flag = dm.Condition(backend=backend), dm.AtomicInt(0, backend=backend)
    with cond:
        child = start(w.notify, cond, flag)  # it can take the lock only while we wait
        assert cond.wait_for(lambda: flag.load() == 1, timeout=WAIT)
    finish(child)


def test_condition_over_a_lock_of_the_same_backend(backend: ProcessesBackend) -> None:
    lock = dm.Lock(backend=backend)
    cond, flag = dm.Condition(lock, backend=backend), dm.AtomicInt(0, backend=backend)
    with lock:
        assert not cond.acquire(blocking=False)  # one real lock under both
        child = start(w.notify, cond, flag)
        assert cond.wait_for(lambda: flag.load() == 1, timeout=WAIT)
    finish(child)


def test_condition_rejects_a_foreign_lock(backend: ProcessesBackend) -> None:
    with pytest.raises(TypeError, match="same ProcessesBackend"):
        dm.Condition(dm.Lock(backend="threads"), backend=backend)
    with ProcessesBackend() as other, pytest.raises(TypeError, match="same ProcessesBackend"):
        dm.Condition(dm.Lock(backend=other), backend=backend)


def test_barrier_parent_and_child_meet(backend: ProcessesBackend) -> None:
    barrier, out = dm.Barrier(2, backend=backend), dm.Queue(backend=backend)
    child = start(w.barrier_wait, barrier, out)
    mine = barrier.wait(timeout=WAIT)
    assert {mine, out.get(timeout=WAIT)} == {0, 1}
    finish(child)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken


def test_rwlock(backend: ProcessesBackend) -> None:
    rw, out, go = dm.RwLock(backend=backend), dm.Queue(backend=backend), dm.Event(backend=backend)
    child = start(w.read_hold, rw, out, go)
    assert out.get(timeout=WAIT) == "reading"
    assert rw.acquire_read(blocking=False)  # readers share
    rw.release_read()
    assert not rw.acquire_write(blocking=False)  # the child still reads
    go.set()
    assert rw.acquire_write(timeout=WAIT)
    rw.release_write()
    finish(child)


def test_once_cell_runs_fn_once_across_processes(backend: ProcessesBackend) -> None:
    cell, runs = dm.OnceCell(backend=backend), dm.AtomicInt(0, backend=backend)
    start_line, out = dm.Barrier(3, backend=backend), dm.Queue(backend=backend)
    children = [start(w.once_race, cell, runs, start_line, out) for _ in range(2)]
    start_line.wait(timeout=WAIT)
    mine = w.get_once(cell, runs)
    results = [mine, out.get(timeout=WAIT), out.get(timeout=WAIT)]
    finish(*children)
    assert results == ["initialised"] * 3
    assert runs.load() == 1
    assert cell.get() == "initialised" and cell.is_set()


def test_sharded_dict(backend: ProcessesBackend) -> None:
    d = dm.ShardedDict(backend=backend)
    d["winner"] = "parent"
    finish(start(w.fill, d, 50))
    assert len(d) == 51
    assert d[7] == 49 and 7 in d and "missing" not in d
    assert d["winner"] == "parent"  # setdefault in the child kept it
    assert d.get_or_insert_with("new", lambda: "made") == "made"
    sentinel = object()  # defaults stay in this process: they need not pickle
    assert d.get("absent", sentinel) is sentinel and d.pop("absent", sentinel) is sentinel
    assert d.pop(7) == 49
    assert dict(d.items())[3] == 9


def test_freeze_lock(backend: ProcessesBackend) -> None:
    fl, out = dm.FreezeLock(41, backend=backend), dm.Queue(backend=backend)
    finish(start(w.increment_frozen, fl))
    assert fl.read() == 42 and not fl.frozen
    with fl.write() as guard:
        assert not fl.frozen  # asking never waits, not even for this live writer
        guard.value = 42
    assert fl.freeze() == 42
    finish(start(w.read_frozen, fl, out))
    assert [out.get(timeout=WAIT) for _ in range(4)] == [42, 42, True, "BorrowError"]


def test_queue_producer_child_consumer_parent(backend: ProcessesBackend) -> None:
    q = dm.Queue(maxsize=10, backend=backend)  # small: the producer must wait for us
    child = start(w.produce, q, 100)
    items = []
    with pytest.raises(dm.QueueShutDown):
        while True:
            items.append(q.get(timeout=WAIT))
    finish(child)
    assert items == list(range(100))


# -- 5: WorkerLocal ------------------------------------------------------------------------------


def test_worker_local_collects_one_value_per_process(backend: ProcessesBackend) -> None:
    wl = dm.WorkerLocal(lambda: {"pid": os.getpid(), "n": 0}, backend=backend)  # cloudpickled
    mine = wl.get()
    assert wl.get() is mine
    mine["n"] = 1
    children = [start(w.use_worker_local, wl) for _ in range(2)]
    finish(*children)
    values = wl.collect()
    assert len(values) == 3
    assert values[0] is mine  # first use was here; this process's entry is its live value
    assert sorted(v["pid"] for v in values[1:]) == sorted(c.pid for c in children)
    assert [v["n"] for v in values[1:]] == [5, 5]  # mutated after get(), published at exit


# -- 6: lifecycle ----------------------------------------------------------------------------------


def test_close_stops_the_coordinator() -> None:
    b = ProcessesBackend()
    counter = dm.AtomicInt(1, backend=b)
    pid = b.coordinator_pid
    assert pid is not None and not gone(pid)
    b.close()
    assert gone(pid)
    assert pid not in [child.pid for child in multiprocessing.active_children()]
    with pytest.raises(dm.WorkerCrashed, match="closed"):
        counter.load()
    b.close()  # idempotent


EXIT_SCRIPT = """
import multiprocessing, os, sys
import dualmode as dm
from dualmode.backends.processes import ProcessesBackend

if __name__ == "__main__":
    closed = ProcessesBackend()
    dm.Lock(backend=closed).acquire()
    closed.close()
    assert multiprocessing.active_children() == [], multiprocessing.active_children()
    with dm.use("processes"):            # a shared instance: config closes it at exit
        shared = dm.current()
        dm.AtomicInt(1).fetch_add(1)
    own = ProcessesBackend()             # never closed: its finalizer stops it at exit
    dm.Queue(backend=own).put("item")
    print(shared.coordinator_pid, own.coordinator_pid, flush=True)
    if sys.argv[1] == "hard":
        os._exit(0)                      # no cleanup at all: the coordinators notice alone
"""


@pytest.mark.parametrize("how", ["normal", "hard"])
def test_exit_without_close_leaves_no_coordinator(how: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), how],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    for pid in pids:
        assert wait_gone(pid), f"coordinator {pid} outlived its process ({how} exit)"


KILLED_SCRIPT = """
import os, time
import dualmode as dm

class Pids(dm.Database):
    @dm.query
    def pid(self, n):
        time.sleep(0.01)
        return os.getpid()

if __name__ == "__main__":
    dm.Lock(backend="processes").acquire()   # the coordinator
    db = Pids(backend="processes", workers=2)
    db.pid.prefetch(range(20))                # the workers, and the table's server
    print("started", flush=True)
    time.sleep(120)                           # until killed
"""


def _descendants(pid: int) -> list[int]:
    """The processes below *pid*, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_parent_killed_hard_leaves_no_process_behind() -> None:
    """SIGKILL (the OOM killer, a test runner's timeout): the coordinator, the pool's
    workers and multiprocessing's resource tracker all exit within 5 s (issue 16)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        started = _descendants(parent.pid)
        assert len(started) >= 4, started  # tracker, coordinator, 2 workers
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(not gone(pid) for pid in started):
        time.sleep(0.1)
    left = [pid for pid in started if not gone(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(started)} processes outlived their killed parent"


UNGUARDED_SCRIPTS = {
    # The coordinator starts for the first primitive.
    "primitive": """
        import dualmode as dm
        from dualmode.backends.processes import ProcessesBackend

        lock = dm.Lock(backend=ProcessesBackend(2))
        print("unreachable")
    """,
    # The worker pool starts for the first parallel call.
    "par_map": """
        import dualmode as dm

        print(dm.par_map(abs, [1, -2, 3], backend="processes"))
    """,
    # Run with -m: spawned children import the main module by name instead.
    "par_map as -m": """
        import dualmode as dm

        with dm.use("processes", workers=2):
            print(dm.par_map(abs, [1, -2, 3]))
    """,
}


@pytest.mark.parametrize("case", sorted(UNGUARDED_SCRIPTS))
def test_unguarded_main_raises_one_error_that_says_to_guard(case: str, tmp_path: Path) -> None:
    script = tmp_path / "unguarded_script.py"
    script.write_text(textwrap.dedent(UNGUARDED_SCRIPTS[case]))
    how = ["-m", script.stem] if case.endswith("-m") else [str(script)]
    result = subprocess.run(
        [sys.executable, *how], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert result.returncode == 1 and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: the processes backend was used at the top level")
    assert 'under `if __name__ == "__main__":`' in last
    # Nothing from the children: one traceback, the parent's (it was a page per child).
    assert result.stderr.count("Traceback") == 1, result.stderr
    assert "bootstrapping phase" not in result.stderr and "WorkerCrashed" not in result.stderr


COORDINATOR_FAILS = """
    import sys

    import dualmode as dm
    from dualmode.backends.processes import ProcessesBackend

    if __name__ != "__main__":  # spawn runs this module again in the coordinator: it dies
        raise ImportError("this module cannot be imported in a child process")
    backend = ProcessesBackend(2)
    for attempt in range(2):  # a failed start leaves nothing half-made: the next one tries anew
        try:
            dm.Lock(backend=backend)
        except dm.WorkerCrashed as exc:
            print(exc, flush=True)
    print(backend.coordinator_pid)
"""


def test_a_coordinator_that_fails_to_start_is_a_worker_crashed_each_time(tmp_path: Path) -> None:
    """Not the unguarded-main error: the child died for its own reason, which it printed."""
    script = tmp_path / "fails_in_child.py"
    script.write_text(textwrap.dedent(COORDINATOR_FAILS))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    *failures, pid = result.stdout.strip().splitlines()
    assert len(failures) == 2 and pid == "None"
    for failure in failures:
        assert failure.startswith("the dualmode coordinator process failed to start")
        assert "its error output, if any, is on this process's stderr" in failure
    assert result.stderr.count("ImportError: this module cannot be imported in a child") == 2
    assert "if __name__ ==" not in result.stderr  # not taken for an unguarded main


@pytest.mark.parametrize("what", ["primitive", "database"])
def test_a_process_without_the_authkey_is_refused_with_the_reason(
    backend: ProcessesBackend, what: str
) -> None:
    """A process not started from the backend's process (so without its authkey) that uses
    a pickled primitive or database gets an AuthenticationError that says why, and the
    coordinator and the database's table keep serving the others."""
    lock = dm.Lock(backend=backend)
    db = w.DiesUnderTwoCallers(backend=backend)
    use = "pickle.loads(data)" if what == "primitive" else "pickle.loads(data).square(3)"
    result = subprocess.run(
        [sys.executable, "-c", f"import pickle, sys; data = sys.stdin.buffer.read(); {use}"],
        input=pickle.dumps(lock if what == "primitive" else db),
        capture_output=True,
        timeout=WAIT,
        cwd=os.path.dirname(__file__),  # where the database's class is importable
    )
    last = result.stderr.decode().strip().splitlines()[-1]
    assert result.returncode == 1
    assert last.startswith("multiprocessing.context.AuthenticationError: this process may not")
    assert "its authkey differs" in last and "Only processes started from the process" in last
    with lock:
        assert db.square(3) == 9
        assert dm.par_map(db.square, [4], backend=backend) == [16]


def test_handle_in_child_creates_in_the_same_coordinator(backend: ProcessesBackend) -> None:
    out = dm.Queue(backend=backend)
    finish(start(w.create_via_handle, out, out))
    assert out.get(timeout=WAIT) == ("ProcessesBackend", backend.coordinator_pid)
    made_there = out.get(timeout=WAIT)  # the child has exited; the queue's copy kept it alive
    assert made_there.load() == 7
    assert made_there.backend is backend
    assert pickle.loads(pickle.dumps(backend)) is backend


def test_hosted_objects_are_freed_when_the_last_copy_dies(backend: ProcessesBackend) -> None:
    def hosted() -> int:
        gc.collect()
        return backend._debug_info()["objects"]  # also sends this process's pending releases

    before = hosted()
    locks = [dm.Lock(backend=backend) for _ in range(5)]
    copies = [pickle.loads(pickle.dumps(lock)) for lock in locks]
    assert hosted() == before + 5
    del locks
    assert hosted() == before + 5  # the copies keep them
    q = dm.Queue(backend=backend)
    q.put(copies[0])
    del copies
    assert hosted() == before + 2  # the queue and its item
    del q
    assert hosted() == before
    counter = dm.AtomicInt(0, backend=backend)
    finish(start(w.add_many, counter, 1))  # the child's copy is given back when it exits
    del counter
    assert hosted() == before


def test_use_and_registry(backend: ProcessesBackend) -> None:
    assert dm.available_backends()["processes"] is None
    with dm.use(backend):
        lock = dm.Lock()
    assert type(lock).__module__.startswith("dualmode.backends.processes.")
    assert isinstance(lock, dm.Lock) and lock.backend is backend
    assert backend.name == "processes" and backend.parallel and backend.workers == 2


def _square_in_worker(db: w.DiesUnderTwoCallers, n: int) -> int:
    return db.square(n)


def test_dualmodes_own_objects_travel_by_reference(backend: ProcessesBackend) -> None:
    """What dualmode pickles for a task names its own functions and classes by reference.

    A function that cloudpickle sends by value is a new function in each task that loads it,
    and free-threaded 3.13 never frees one once a second thread has started (it makes
    functions, code objects and classes immortal): a worker grew ~2 kB per task from the job
    table's unpickler alone."""
    db = w.DiesUnderTwoCallers(backend=backend, workers=2)
    assert db.square(3) == 9  # the owner's job table is made, and served when pickled
    assert dm.par_map(functools.partial(_square_in_worker, db), [4], backend=backend) == [16]
    travelling = {
        "database": db,
        "query": db.square,
        "backend": backend,
        "Lock": dm.Lock(backend=backend),
        "RLock": dm.RLock(backend=backend),
        "Semaphore": dm.Semaphore(2, backend=backend),
        "Event": dm.Event(backend=backend),
        "Condition": dm.Condition(backend=backend),
        "Barrier": dm.Barrier(2, backend=backend),
        "RwLock": dm.RwLock(backend=backend),
        "OnceCell": dm.OnceCell(backend=backend),
        "AtomicInt": dm.AtomicInt(0, backend=backend),
        "Mutex": dm.Mutex(0, backend=backend),
        "Queue": dm.Queue(backend=backend),
        "ShardedDict": dm.ShardedDict(backend=backend),
        "FreezeLock": dm.FreezeLock(0, backend=backend),
        "WorkerLocal": dm.WorkerLocal(dict, backend=backend),
        "WorkerCrashed": dm.WorkerCrashed("gone"),
    }
    for what, obj in travelling.items():
        data = cloudpickle.dumps(obj)
        for code in (b"_make_function", b"_make_skeleton_class", b"<dynamic-code>"):
            assert code not in data, f"{what} pickles code by value"


@pytest.mark.parametrize("repeat", range(2))
def test_a_function_sent_by_value_is_loaded_once_per_worker(repeat: int) -> None:
    """docs/architecture.md#code-that-travels-by-value: a worker keeps the function it loaded
    from the same bytes, so state a task leaves on it is there for the next task; a function
    over LARGEST_KEPT bytes (its closure holds big data) loads afresh for each task."""
    big = bytes(by_value.LARGEST_KEPT)

    def count(_: int) -> int:  # nested: cloudpickle sends it by value
        count.calls = getattr(count, "calls", 0) + 1  # type: ignore[attr-defined]
        return count.calls  # type: ignore[attr-defined, no-any-return]

    def count_big(_: int) -> int:
        count_big.calls = getattr(count_big, "calls", 0) + len(big[:1])  # type: ignore[attr-defined]
        return count_big.calls  # type: ignore[attr-defined, no-any-return]

    with ProcessesBackend(workers=1) as one:
        assert dm.par_map(count, range(5), chunksize=1, backend=one) == [1, 2, 3, 4, 5]
        assert dm.par_map(count, range(2), chunksize=1, backend=one) == [6, 7]
        assert dm.par_map(count_big, range(3), chunksize=1, backend=one) == [1, 1, 1]


@pytest.mark.timeout(120)
def test_a_worker_running_many_tasks_of_one_lambda_does_not_grow(
    backend: ProcessesBackend,
) -> None:
    """Free-threaded 3.13 never frees a function made after a second thread started: a
    worker that loaded a lambda afresh for each task grew ~1.4 kB per task there."""
    dm.broadcast(w.traced_memory, backend=backend)
    try:
        for i in range(200):
            dm.par_map(lambda x: x + 1, [i], backend=backend)
        before = dm.broadcast(w.traced_memory, backend=backend)
        for i in range(1_000):
            dm.par_map(lambda x: x + 1, [i], backend=backend)
        after = dm.broadcast(w.traced_memory, backend=backend)
    finally:  # the backend serves the module's other tests
        dm.broadcast(tracemalloc.stop, backend=backend)
    # 500 tasks per worker: 700 kB grown before; allow for the allocator's slack.
    assert sum(after) - sum(before) < 100_000, (before, after)


# -- 7: errors -----------------------------------------------------------------------------------


def test_exceptions_keep_their_types(backend: ProcessesBackend) -> None:
    barrier = dm.Barrier(2, backend=backend)
    barrier.abort()
    with pytest.raises(dm.BrokenBarrierError):
        barrier.wait()
    q = dm.Queue(maxsize=1, backend=backend)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    q.shutdown()
    with pytest.raises(dm.QueueShutDown):
        q.put(3)
    fl = dm.FreezeLock(0, backend=backend)
    fl.freeze()
    with pytest.raises(dm.BorrowError):
        fl.write()
    cell = dm.OnceCell(backend=backend)
    with pytest.raises(dm.BorrowError):
        cell.get_or_init(lambda: cell.get_or_init(lambda: 1))
    assert cell.get_or_init(lambda: 2) == 2  # the failed claim was abandoned
    with pytest.raises(RuntimeError):
        dm.Lock(backend=backend).release()
    with pytest.raises(ValueError):
        dm.BoundedSemaphore(1, backend=backend).release()
    with pytest.raises(ValueError):
        dm.Semaphore(-1, backend=backend)
    with pytest.raises(TypeError):
        dm.AtomicInt("1", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        dm.ShardedDict(backend=backend)["missing"]
    with pytest.raises(ValueError):
        dm.Lock(backend=backend).acquire(blocking=False, timeout=1)


def test_an_exception_that_cannot_come_back_arrives_as_a_remote_error(
    backend: ProcessesBackend,
) -> None:
    """One that does not load in the caller, one that does not pickle: each arrives as a
    RemoteError naming its type, with its message and the worker's traceback, and the other
    items' results are not lost."""
    with pytest.raises(dm.ParallelError) as raised:
        dm.par_map(w.fail_unreturnably, [0, 1, 2, 3], chunksize=4, backend=backend)
    assert raised.value.indices == [1, 2]
    needs_two, holds_a_lock = raised.value.exceptions
    assert isinstance(needs_two, dm.RemoteError) and isinstance(holds_a_lock, dm.RemoteError)
    assert needs_two.type_name == "_processes_workers.NeedsTwo"
    assert needs_two.message == "item 1 failed: on purpose"
    assert holds_a_lock.type_name == "_processes_workers.HoldsALock"
    assert holds_a_lock.message == "holding a lock"
    for error in (needs_two, holds_a_lock):
        assert "in fail_unreturnably" in error.remote_traceback
        assert "could not be sent back as itself" in str(error)
        assert any("traceback in dualmode worker process" in n for n in error.__notes__)
    assert dm.par_map(w.fail_unreturnably, [0, 3], backend=backend) == [0, 30]


def test_a_result_that_cannot_come_back_fails_its_item_alone(backend: ProcessesBackend) -> None:
    """Its item fails with a TypeError that says why and what to do; the other results of the
    same chunk are kept, and a single call's (join) fails the same way."""
    with pytest.raises(dm.ParallelError) as raised:
        dm.par_map(w.lock_for_odd, range(4), chunksize=4, backend=backend)
    assert raised.value.indices == [1, 3]
    with pytest.raises(dm.ParallelError) as joined:
        dm.join(lambda: 0, functools.partial(w.lock_for_odd, 1), backend=backend)
    assert joined.value.indices == [1]
    for error in [*raised.value.exceptions, *joined.value.exceptions]:
        assert isinstance(error, TypeError)
        assert "the result could not be pickled to send back from worker process" in str(error)
        assert "_thread.lock" in str(error)
        assert "return picklable data, or use the threads backend" in str(error)
    assert dm.par_map(w.lock_for_odd, [0, 2], backend=backend) == [0, 20]


UNPICKLABLE_TASKS: dict[str, tuple[Callable[[ProcessesBackend, Any, Any], object], str]] = {
    "par_map's function": (
        lambda b, fn, lock: dm.par_map(fn, [1, 2], backend=b),
        r"^the function .*holds_a_lock \(builtins.function\) cannot be pickled",
    ),
    "join's second function": (
        lambda b, fn, lock: dm.join(lambda: 0, fn, backend=b),
        r"^the function .*holds_a_lock \(builtins.function\) cannot be pickled",
    ),
    "broadcast's function": (
        lambda b, fn, lock: dm.broadcast(fn, backend=b),
        r"^the function .*holds_a_lock \(builtins.function\) cannot be pickled",
    ),
    "a scope task's argument": (
        lambda b, fn, lock: _spawn_in_scope(b, abs, lock),
        r"^argument 0 \(_thread.lock\) cannot be pickled",
    ),
}


def _spawn_in_scope(backend: ProcessesBackend, fn: Callable[..., Any], *args: Any) -> None:
    with dm.scope(backend=backend) as s:
        s.spawn(fn, *args)


@pytest.mark.parametrize("case", sorted(UNPICKLABLE_TASKS))
def test_a_task_that_cannot_be_pickled_is_named_before_it_runs(
    backend: ProcessesBackend, case: str
) -> None:
    """A TypeError names the caller's function or argument (not the wrapper that carries it)
    and says what to do; nothing ran, and the pool works afterwards."""
    lock = threading.Lock()
    ran = dm.AtomicInt(0, backend=backend)

    def holds_a_lock(*_: object) -> int:  # a closure over a lock: cloudpickle cannot take it
        ran.fetch_add(1)
        return 0 if lock.locked() else 1

    call, message = UNPICKLABLE_TASKS[case]
    with pytest.raises(TypeError, match=message) as raised:
        call(backend, holds_a_lock, lock)
    assert "to send to a worker process" in str(raised.value)
    assert "or use the threads backend" in str(raised.value)
    assert ran.load() == 0
    assert dm.par_map(abs, [-1, -2], backend=backend) == [1, 2]


@pytest.mark.parametrize("repeat", range(3))
def test_a_worker_killed_mid_task_fails_that_chunk_alone_and_the_pool_heals(
    backend: ProcessesBackend, repeat: int
) -> None:
    """The chunk whose worker died fails with WorkerCrashed naming the function and its
    items; every other chunk's results are kept; the next call gets a new pool, and the dead
    pool's processes are gone."""
    before = set(dm.par_map(w.worker_pid, range(8), chunksize=1, backend=backend))
    with pytest.raises(dm.ParallelError) as raised:
        dm.par_map(w.dies_at_three, range(8), chunksize=2, backend=backend)
    # The other worker's chunks may be lost with the pool too (a broken pool fails every
    # task it holds), never silently: each failure is a WorkerCrashed at its chunk's start.
    assert 2 in raised.value.indices
    for index, error in zip(raised.value.indices, raised.value.exceptions, strict=True):
        assert isinstance(error, dm.WorkerCrashed)
        assert f"dies_at_three on items {index} to {index + 1}" in str(error)
    assert dm.par_map(w.dies_at_three, [0, 1, 2], backend=backend) == [0, 10, 20]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_process_exists(pid) for pid in before):
        time.sleep(0.05)
    assert not [pid for pid in before if _process_exists(pid)], "the dead pool's workers live"


def test_abandoning_a_running_task_kills_the_pool_and_the_next_call_gets_a_new_one() -> None:
    """What an interrupted parallel call does (``Backend.abandon``): the running task fails
    with WorkerCrashed, the queued one is cancelled or fails so too (the pool may have handed
    it to a worker already), never lost; the workers are gone, and the next call runs on new
    ones."""
    with ProcessesBackend(workers=1) as b:
        before = set(dm.par_map(w.worker_pid, range(2), backend=b))
        started, never = dm.Event(backend=b), dm.Event(backend=b)
        running = b.submit(w.announce_then_wait, started, never)
        queued = b.submit(w.announce_then_wait, started, never)
        assert started.wait(WAIT)
        b.abandon([running, queued])
        with pytest.raises(dm.WorkerCrashed, match="died while running announce_then_wait"):
            running.result(WAIT)
        assert queued.cancelled() or isinstance(queued.exception(WAIT), dm.WorkerCrashed)
        assert dm.par_map(abs, [-1, -2], backend=b) == [1, 2]
        assert not before & set(dm.par_map(w.worker_pid, range(2), backend=b))
        assert all(wait_gone(pid) for pid in before)


def _process_exists(pid: int) -> bool:
    """Stricter than ``gone``: a zombie still exists (the pool must reap what it ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unpicklable_argument_leaves_the_connection_usable(backend: ProcessesBackend) -> None:
    q, lock = dm.Queue(backend=backend), dm.RLock(backend=backend)
    lock.acquire()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(threading.Lock())
    lock.release()  # still the owner: the failed call did not cost this thread its connection
    q.put("fine")
    assert q.get() == "fine"


def test_killed_coordinator_raises_worker_crashed() -> None:
    with ProcessesBackend() as b:
        counter, event = dm.AtomicInt(0, backend=b), dm.Event(backend=b)
        outcome: list[BaseException] = []

        def wait_forever() -> None:
            try:
                event.wait()
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait_forever)
        waiter.start()  # blocked in the coordinator, or about to be: WorkerCrashed either way
        pid = b.coordinator_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(dm.WorkerCrashed, match="SIGKILL"):
            counter.fetch_add(1)
        with pytest.raises(dm.WorkerCrashed):
            counter.load()
        with pytest.raises(dm.WorkerCrashed):
            dm.Lock(backend=b)
        waiter.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], dm.WorkerCrashed)
    assert gone(pid)
    assert pid not in [child.pid for child in multiprocessing.active_children()]


def _unstick_pool_workers() -> None:
    """Kill the pool workers of this process, so that a hung test can still close its backend."""
    for child in multiprocessing.active_children():
        if not child.name.startswith("dualmode-coordinator") and child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)


def _prefetch(
    db: w.DiesUnderTwoCallers,
    k: int,
    start_together: threading.Barrier,
    outcomes: list[BaseException | None],
    i: int,
) -> None:
    start_together.wait()
    try:
        db.waits.prefetch([k])
    except BaseException as exc:
        outcomes[i] = exc


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_a_worker_dying_under_two_callers_fails_both_and_never_hangs() -> None:
    # Each run breaks the pool, so the next starts a new one: the race was in its first tasks
    # (a worker started after the pool's manager thread began to wait was never watched).
    runs, hang = 50, 30.0
    with ProcessesBackend(workers=2) as b:
        for run in range(runs):
            db = w.DiesUnderTwoCallers(backend=b)  # a new database: die(0) executes again
            start_together = threading.Barrier(2)
            outcomes: list[BaseException | None] = [None, None]
            callers = [
                threading.Thread(
                    target=_prefetch, args=(db, run, start_together, outcomes, i), daemon=True
                )
                for i in (0, 1)
            ]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(hang)
            if any(caller.is_alive() for caller in callers):
                faulthandler.dump_traceback(all_threads=True)  # where it waits, in the report
                _unstick_pool_workers()
                pytest.fail(f"run {run}: prefetch still waiting after {hang} s")
            for outcome in outcomes:
                assert isinstance(outcome, dm.ParallelError), f"run {run}: {outcome!r}"
                assert all(isinstance(e, dm.WorkerCrashed) for e in outcome.exceptions)
            assert db.square(run) == run * run  # here: the next run must start a new pool
        # The pool is replaced: the database keeps working in new workers.
        assert dm.par_map(db.square, [3, 7], backend=b) == [9, 49]


@pytest.mark.timeout(60)
def test_a_client_gone_mid_handshake_does_not_stop_the_table_server() -> None:
    # A broken pool terminates its workers, maybe one in the middle of connecting to the
    # database owner's table server: the server must go on accepting the others (issue 11's
    # A9 test hung when it did not).
    from dualmode.backends.processes.job_table import RemoteJobTable
    from dualmode.backends.processes.table_server import SharedJobTable

    table = SharedJobTable({"q": False})
    _, (address, ident, owner_pid) = table.__reduce__()
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as hung_up:
            hung_up.connect(address)  # and gone before the handshake
    client = RemoteJobTable(address, ident, owner_pid)
    client.attach(["q"], lambda: [])
    assert client.stats()[0]["q"][0] == 0  # answered: the server still accepts


def test_the_owners_own_results_reach_the_clients_as_news_packed_when_sent() -> None:
    # The owner's results wait in the news unpacked (packing each as it was published cost
    # the owner as much as the publish); a client thread gets them packed, as a worker's.
    from dualmode.backends.processes.packing import unpack_entry, unpack_fields
    from dualmode.backends.processes.table_server import NEWS_MAX_BYTES, SharedJobTable
    from dualmode.query.job_table import Claim
    from dualmode.query.memo import Memo, MemoState

    table = SharedJobTable({"q": False})
    table.serve_news()
    me, client, other_client = (os.getpid(), 1), (os.getpid() + 1, 1), (os.getpid() + 2, 1)
    values = {1: "small", 2: "x" * NEWS_MAX_BYTES, 3: (1, 2.5)}  # 2 is too large for news
    for n, value in values.items():
        assert table.claim("q", (n,), me, table.revision)[0] is Claim.RUN
        table.publish("q", (n,), me, Memo(MemoState.OK, value, (), table.revision))

    def news(reader: tuple[int, int]) -> dict[int, Any]:
        got = {}
        for pid, entry in table.news_since(reader):
            name, key, fields = unpack_entry(entry)
            assert (pid, name) == (os.getpid(), "q")
            got[key[0]] = unpack_fields(fields).value
        return got

    assert news(client) == {1: "small", 3: (1, 2.5)}
    assert news(other_client) == {1: "small", 3: (1, 2.5)}  # packed once, sent to each
    assert news(client) == {}  # nothing new since its last request


@pytest.mark.timeout(120)
def test_a_dropped_database_leaves_no_results_in_its_owner(backend: ProcessesBackend) -> None:
    # The owner passes each worker's results on to the other workers (news): once the
    # database is dropped, nothing of that may stay in the owner (its server threads kept
    # the last list of news of every table they had served, 10,000 memos for a 10,000-query
    # run, and every later garbage collection walked them).
    from dualmode.query.memo import Memo

    def memos_in_this_process() -> int:
        gc.collect()
        return sum(type(o) is Memo for o in gc.get_objects())

    counts = []
    for _ in range(3):
        db = w.DiesUnderTwoCallers(backend=backend)
        db.square.prefetch(range(2_000))  # computed in the workers, in chunks
        assert db.square(1_999) == 1_999 * 1_999
        del db
        counts.append(memos_in_this_process())
    assert counts[2] <= counts[0] + 10, counts
