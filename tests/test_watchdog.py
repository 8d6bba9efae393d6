"""The deadlock watchdog (``watchdog=SECONDS``): blocked callers raise DeadlockError.

docs/guarantees.md#the-deadlock-watchdog says what it reports. The acceptance line: with
``watchdog=1.0``, a lock-order deadlock between two named threads raises DeadlockError naming
both threads in both of them within 4 s, on threads and processes; a query cycle still raises
CycleError at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _concurrency import JOIN_TIMEOUT, wait_until, wait_until_blocked

import dualmode as dm
from dualmode import config
from dualmode.backends.threads import ThreadsBackend

LIMIT = 1.0

# A primitive made in this file, as a report names it: the path is relative to the working
# directory when under it (README's command), absolute otherwise (nox runs from a temp dir).
CREATED_HERE = r"waits for {kind} \(created at (\S*/)?tests/test_watchdog\.py:\d+\)"

pytest_plugins = ["pytester"]


@pytest.fixture
def watched(dualmode_parallel_backend: str) -> Iterator[dm.Backend]:
    """The parallel backend under test, with watchdog=1.0, in force and closed after."""
    with type(dm.current())(workers=2, watchdog=LIMIT) as backend, dm.use(backend):
        yield backend


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dualmode-watchdog"]


def run_named(targets: dict[str, Callable[[], object]]) -> dict[str, BaseException | None]:
    """Run each target on a thread of that name, released together; what each raised."""
    start = threading.Barrier(len(targets))
    raised: dict[str, BaseException | None] = {}

    def body(name: str, target: Callable[[], object]) -> None:
        start.wait()
        try:
            target()
        except BaseException as exc:
            raised[name] = exc
        else:
            raised[name] = None

    threads = [
        threading.Thread(target=body, args=item, name=item[0], daemon=True)
        for item in targets.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread is still blocked: a hang"
    return raised


def take_both(first: Any, second: Any, both_hold: threading.Barrier) -> Callable[[], None]:
    """Hold *first*, wait until every thread holds its first, then take *second*."""

    def run() -> None:
        with first:
            both_hold.wait()
            with second:
                pass

    return run


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attempt", range(2))
def test_lock_order_deadlock_raises_in_both_threads_naming_both(
    watched: dm.Backend, attempt: int
) -> None:
    a, b = dm.Lock(), dm.Lock()
    both_hold = threading.Barrier(2)
    began = time.monotonic()
    raised = run_named(
        {
            "left-thread": take_both(a, b, both_hold),
            "right-thread": take_both(b, a, both_hold),
        }
    )
    took = time.monotonic() - began
    for name in ("left-thread", "right-thread"):
        error = raised[name]
        assert isinstance(error, dm.DeadlockError), (name, error)
        message = str(error)
        assert "'left-thread'" in message and "'right-thread'" in message, message
        assert re.search(CREATED_HERE.format(kind="Lock"), message), message
        assert len(error.waits) == 2
    assert str(raised["left-thread"]) == str(raised["right-thread"])
    assert took < 4.0, took
    # Nothing was taken by the calls that raised: both locks are free again.
    assert not a.locked() and not b.locked()


@pytest.mark.timeout(60)
def test_three_threads_in_a_cycle_of_lock_rlock_and_mutex() -> None:
    with ThreadsBackend(workers=2, watchdog=LIMIT) as backend, dm.use(backend):
        lock, rlock, mutex = dm.Lock(), dm.RLock(), dm.Mutex(0)
        all_hold = threading.Barrier(3)

        def third() -> None:
            with mutex.lock():
                all_hold.wait()
                with lock:
                    pass

        raised = run_named(
            {
                "one": take_both(lock, rlock, all_hold),
                "two": take_both(rlock, _MutexGuard(mutex), all_hold),
                "three": third,
            }
        )
    for name in ("one", "two", "three"):
        error = raised[name]
        assert isinstance(error, dm.DeadlockError), (name, error)
        text = str(error)
        assert "3 blocked callers" in text
        for kind in ("Lock", "RLock", "Mutex"):
            assert f"waits for {kind} (created at" in text, text
        for who in ("'one'", "'two'", "'three'"):
            assert who in text


class _MutexGuard:
    """``with mutex.lock():`` as a plain context manager, for take_both."""

    def __init__(self, mutex: dm.Mutex[Any]) -> None:
        self._mutex = mutex
        self._guard: Any = None

    def __enter__(self) -> None:
        self._guard = self._mutex.lock()
        self._guard.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._guard.__exit__(*exc)


@pytest.mark.timeout(60)
def test_a_thread_that_retakes_a_lock_it_holds_is_told() -> None:
    with ThreadsBackend(watchdog=LIMIT) as backend, dm.use(backend):
        lock = dm.Lock()

        def again() -> None:
            with lock, lock:
                pass

        raised = run_named({"greedy": again})
    error = raised["greedy"]
    assert isinstance(error, dm.DeadlockError)
    assert "waits for itself" in str(error) and "held by thread 'greedy'" in str(error)
    assert not lock.locked()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attempt", range(2))
def test_a_long_but_progressing_wait_is_not_reported(watched: dm.Backend, attempt: int) -> None:
    lock = dm.Lock()
    holding = threading.Event()

    def holder() -> None:
        with lock:
            holding.set()
            time.sleep(2 * LIMIT)  # asleep, not waiting on anything of dualmode

    def waiter() -> None:
        holding.wait(JOIN_TIMEOUT)
        with lock:
            pass

    raised = run_named({"holder": holder, "waiter": waiter})
    assert raised == {"holder": None, "waiter": None}


NOBODY_SETS = """
import dualmode as dm
from dualmode.backends.threads import ThreadsBackend

with ThreadsBackend(watchdog=1.0) as backend, dm.use(backend):
    event = dm.Event()
    try:
        event.wait()
    except dm.DeadlockError as exc:
        print(exc)
"""


@pytest.mark.timeout(60)
def test_an_event_nobody_sets_is_reported_once_every_thread_is_blocked(tmp_path: Path) -> None:
    # The main thread is the only thread, and it waits with no timeout: nothing can set it.
    # In an interpreter of its own: in this one, earlier tests' backends keep threads alive.
    script = tmp_path / "nobody_sets.py"
    script.write_text(NOBODY_SETS)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=JOIN_TIMEOUT
    )
    assert run.returncode == 0, run.stderr
    assert "every thread of this process has been blocked" in run.stdout
    assert "thread 'MainThread' waits for Event (created at " in run.stdout
    assert "nobody_sets.py:6)" in run.stdout, run.stdout


@pytest.mark.timeout(60)
def test_a_pool_whose_every_worker_waits_is_reported() -> None:
    # A thread of someone else's, alive and not waiting on dualmode (as other libraries' and
    # backends' threads are in a real program, or in a test suite): the pool is stalled all
    # the same.
    bystander_done = threading.Event()
    bystander = threading.Thread(target=bystander_done.wait, name="bystander", daemon=True)
    bystander.start()
    try:
        with ThreadsBackend(workers=2, watchdog=LIMIT) as backend, dm.use(backend):
            never = dm.Event()
            with pytest.raises(dm.ParallelError) as caught:
                dm.par_map(lambda _: never.wait(), range(2), chunksize=1)
    finally:
        bystander_done.set()
        bystander.join(JOIN_TIMEOUT)
    errors = caught.value.exceptions
    assert len(errors) == 2 and all(isinstance(e, dm.DeadlockError) for e in errors)
    text = str(errors[0])
    assert "'dualmode-threads-0'" in text and "'dualmode-threads-1'" in text
    assert "thread 'MainThread' waits for the tasks of a parallel call it made" in text


@pytest.mark.timeout(60)
def test_an_event_wait_is_not_reported_while_another_thread_runs() -> None:
    # The main thread sleeps (it could still set the event): not every thread is blocked.
    with ThreadsBackend(watchdog=LIMIT) as backend, dm.use(backend):
        event = dm.Event()
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(event.wait()), daemon=True)
        thread.start()
        time.sleep(3 * LIMIT)
        event.set()
        thread.join(JOIN_TIMEOUT)
    assert got == [True]


@pytest.mark.timeout(60)
def test_a_query_cycle_still_raises_cycle_error_at_once() -> None:
    class Cyclic(dm.Database):
        @dm.query
        def hop(self, side: int) -> int:  # hop(0) needs hop(1), which needs hop(0)
            return self.hop(1 - side)

    # A limit far above the test's timeout: a DeadlockError could not come in time.
    with ThreadsBackend(workers=2, watchdog=100.0) as backend:
        db = Cyclic(backend=backend)
        started = time.monotonic()
        raised = run_named({"left": lambda: db.hop(0), "right": lambda: db.hop(1)})
        took = time.monotonic() - started
    assert all(isinstance(error, dm.CycleError) for error in raised.values()), raised
    assert took < 10.0


@pytest.mark.timeout(60)
def test_a_cycle_through_a_lock_and_a_query_is_reported() -> None:
    with ThreadsBackend(workers=2, watchdog=LIMIT) as backend:
        lock = dm.Lock(backend=backend)
        started, locked = threading.Event(), threading.Event()

        class Ledger(dm.Database):
            @dm.query
            def total(self, n: int) -> int:
                started.set()
                locked.wait(JOIN_TIMEOUT)
                with lock:  # held by "auditor", who waits for this query
                    return n

        db = Ledger(backend=backend)

        def auditor() -> None:
            started.wait(JOIN_TIMEOUT)
            with lock:
                locked.set()
                db.total(1)

        raised = run_named({"clerk": lambda: db.total(1), "auditor": auditor})
    for name in ("clerk", "auditor"):
        assert isinstance(raised[name], dm.DeadlockError), raised
    text = str(raised["auditor"])
    assert "thread 'auditor' waits for query total(1), held by thread 'clerk'" in text, text
    assert re.search("thread 'clerk' " + CREATED_HERE.format(kind="Lock"), text), text


@pytest.mark.timeout(60)
def test_off_by_default(monkeypatch: pytest.MonkeyPatch, close_named_backends: None) -> None:
    monkeypatch.delenv(config.WATCHDOG_ENV, raising=False)
    assert ThreadsBackend().watchdog is None
    with dm.use("threads") as backend:
        assert backend.watchdog is None and backend.watcher is None
        lock = dm.Lock()
    lock.acquire()
    thread = threading.Thread(target=lambda: lock.acquire() and lock.release(), daemon=True)
    thread.start()
    wait_until_blocked(thread)
    assert watchdog_threads() == []
    lock.release()
    thread.join(JOIN_TIMEOUT)


@pytest.mark.timeout(60)
def test_the_environment_sets_the_default(
    monkeypatch: pytest.MonkeyPatch, close_named_backends: None
) -> None:
    monkeypatch.setenv(config.WATCHDOG_ENV, "1.5")
    with dm.use("threads") as backend:
        assert backend.watchdog == 1.5
    with dm.use("threads", watchdog=0) as backend:  # 0: off, whatever the environment says
        assert backend.watchdog is None
    with dm.use("threads", watchdog=3) as backend:
        assert backend.watchdog == 3.0
    monkeypatch.setenv(config.WATCHDOG_ENV, "0")
    with dm.use("threads") as backend:
        assert backend.watchdog is None
    monkeypatch.setenv(config.WATCHDOG_ENV, "soon")
    with (
        pytest.raises(dm.ConfigError, match=r"DUALMODE_WATCHDOG='soon' is not a time limit"),
        dm.use("threads"),
    ):
        pass


@pytest.mark.timeout(60)
def test_configure_sets_it_process_wide(
    monkeypatch: pytest.MonkeyPatch, close_named_backends: None
) -> None:
    monkeypatch.delenv(config.WATCHDOG_ENV, raising=False)
    try:
        dm.configure(backend="threads", watchdog=2.0)
        assert dm.current().watchdog == 2.0
        assert "watchdog=2" in repr(dm.current())
    finally:
        dm.configure()
    with pytest.raises(dm.ConfigError, match="needs a backend name too"):
        dm.configure(watchdog=1.0)
    for bad in ("1", -1.0, float("nan"), True):
        with pytest.raises(dm.ConfigError, match="is not a time limit"):
            dm.configure(backend="threads", watchdog=bad)  # type: ignore[arg-type]
    with (
        ThreadsBackend() as backend,
        pytest.raises(dm.ConfigError, match="conflicts with the backend instance"),
        dm.use(backend, watchdog=1.0),
    ):
        pass


@pytest.mark.timeout(60)
def test_no_thread_is_left_behind() -> None:
    # Counted as threads that appear: another backend's watchdog may end meanwhile.
    others = set(watchdog_threads())

    def ours() -> int:
        return len(set(watchdog_threads()) - others)

    with ThreadsBackend(watchdog=LIMIT) as backend:
        lock = dm.Lock(backend=backend)
        lock.acquire()
        thread = threading.Thread(target=lambda: lock.acquire() and lock.release(), daemon=True)
        thread.start()
        wait_until_blocked(thread)
        assert ours() == 1  # started by the first wait
        lock.release()
        thread.join(JOIN_TIMEOUT)
        wait_until(lambda: ours() == 0)  # gone once nothing blocks
        lock.acquire()
        thread = threading.Thread(target=lambda: lock.acquire() and lock.release(), daemon=True)
        thread.start()
        wait_until_blocked(thread)
        assert ours() == 1  # a new wait starts a new one
    # close() stopped it while a thread still waited.
    assert ours() == 0
    lock.release()
    thread.join(JOIN_TIMEOUT)


def test_deadlock_error_pickles_with_its_lines() -> None:
    import pickle

    error = dm.DeadlockError("deadlock: ...", ["thread 'a' waits for Lock"])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is dm.DeadlockError
    assert str(copy) == "deadlock: ..." and copy.waits == ["thread 'a' waits for Lock"]


# -- the pytest plugin turns it on for the session ---------------------------------------------

SESSION_TEST = textwrap.dedent(
    """
    import os

    import dualmode as dm

    def test_limit(dualmode_backend):
        print("limit:", os.environ.get("DUALMODE_WATCHDOG"), dm.current().watchdog)
    """
)


@pytest.mark.parametrize(
    ("environment", "args", "shown"),
    [
        (None, [], "limit: 10 10.0"),  # the plugin's default
        (None, ["--dualmode-watchdog", "3"], "limit: 3 3.0"),
        (None, ["--dualmode-watchdog", "0"], "limit: 0 None"),  # off
        ("7", [], "limit: 7 7.0"),  # the environment's own choice stands
        ("7", ["--dualmode-watchdog", "2.5"], "limit: 2.5 2.5"),  # the option wins
    ],
)
def test_the_plugin_sets_the_sessions_limit(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    close_named_backends: None,
    environment: str | None,
    args: list[str],
    shown: str,
) -> None:
    if environment is None:
        monkeypatch.delenv(config.WATCHDOG_ENV, raising=False)
    else:
        monkeypatch.setenv(config.WATCHDOG_ENV, environment)
    pytester.makepyfile(SESSION_TEST)
    result = pytester.runpytest("-s", "--dualmode-backend", "threads", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{shown}*"])
    assert os.environ.get(config.WATCHDOG_ENV) == environment  # put back after the session


def test_the_plugin_refuses_a_bad_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SESSION_TEST)
    result = pytester.runpytest("--dualmode-watchdog", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dualmode-watchdog*is not a time limit*"])
