"""CPython's own ``Lib/test/lock_tests.py`` against dualmode's primitives.

That suite is what ``threading.Lock``, ``RLock``, ``Condition``, ``Semaphore``,
``BoundedSemaphore``, ``Event`` and ``Barrier`` pass in CPython's ``test_threading``; code that
adopts dualmode in place of ``threading`` relies on the same behaviour. It is imported from the
running interpreter's own ``test`` package (so 3.11 and 3.13t each run their own version), never
copied here. Below, one class per backend and entry of ``SUITES`` subclasses a lock_tests class
and sets its ``locktype`` (``eventtype``...) to dualmode's class, as ``test_threading`` does
with threading's; ``NOT_APPLICABLE`` lists, with the reason, each test that does not apply.

- ``threads``: every test applies and passes but two: ``test_threading``'s own skip (a
  Condition used as an RLock has no ``_recursion_count``), and the Event test that reaches into
  ``threading.Event``'s private ``_cond`` (dualmode's Event queues threads and tasks in a
  parking lot of its own; its ``_at_fork_reinit`` is tested in test_async_primitives.py).
- ``processes``: the behaviour applies, since its primitives serve threads of one process as
  they serve processes. What does not apply, each with its reason below: the private methods
  ``threading`` calls on its own locks, reprs (a processes primitive's repr names its hosted
  object and makes no round trip to show its state), ``Condition`` over a ``threading.Lock``
  (the coordinator that hosts the Condition cannot reach a lock of this process), and a
  Barrier action that appends to the test's list (the action runs in the coordinator).
- ``serial``: not run; its primitives belong to their creating thread (``WrongThreadError``),
  and every test here uses several threads.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import time
import unittest
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _concurrency import threads_in, wait_until

import dualmode as dm

lock_tests: Any = pytest.importorskip(
    "test.lock_tests",
    reason="this interpreter ships without CPython's test package (test.lock_tests)",
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _threads_really_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """lock_tests waits for its threads to block with a sleep of 10 ms per thread. A thread's
    first call on a processes primitive opens its connection to the coordinator first, which
    under load takes longer: ``test_set_and_clear`` then set and cleared its Event before a
    waiter had asked, and that waiter slept out its timeout. Wait until the threads are
    blocked (all of them, if fewer are left; 10 s at most), then sleep as lock_tests does,
    for the coordinator to take the requests in."""
    sleep = getattr(lock_tests, "wait_threads_blocked", None)
    if sleep is None:  # an older lock_tests sleeps inline
        return

    def wait_threads_blocked(nthread: int) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            running, blocked = threads_in(lock_tests.__file__)
            # The test's own thread runs there too; some tests ask for more threads than
            # are left (test_notify's last phase: 5 of which 3 have ended).
            if blocked >= min(nthread, running - 1):
                break
            time.sleep(0.001)
        sleep(nthread)

    monkeypatch.setattr(lock_tests, "wait_threads_blocked", wait_threads_blocked)


@pytest.fixture(autouse=True)
def _thread_exits_counted_without_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """lock_tests' ``Bunch`` waits for its threads to exit by polling ``_thread._count()``,
    with three full collections (``support.gc_collect``) per poll, for interpreters whose
    threads end only when collected. CPython's end without them, and after the rest of the
    suite a full collection takes 0.6 s on free-threaded 3.13 (it walks the whole heap):
    the lock tests took 258 s there, 21 s alone. Poll the count alone, as long as before."""

    @contextlib.contextmanager
    def wait_threads_exit(timeout: float | None = None) -> Iterator[None]:
        before = _thread._count()
        try:
            yield
        finally:
            wait_until(
                lambda: _thread._count() <= before,
                timeout or lock_tests.support.SHORT_TIMEOUT,
            )

    monkeypatch.setattr(lock_tests.threading_helper, "wait_threads_exit", wait_threads_exit)


# (suite, lock_tests class, the attribute it builds objects with, dualmode's class), as
# CPython's test_threading pairs them with threading's classes.
SUITES: list[tuple[str, Any, str, Callable[..., Any]]] = [
    ("Lock", lock_tests.LockTests, "locktype", dm.Lock),
    ("RLock", lock_tests.RLockTests, "locktype", dm.RLock),
    ("Event", lock_tests.EventTests, "eventtype", dm.Event),
    # A Condition uses an RLock by default and exports its API (as in test_threading).
    ("ConditionAsRLock", lock_tests.RLockTests, "locktype", dm.Condition),
    ("Condition", lock_tests.ConditionTests, "condtype", dm.Condition),
    ("Semaphore", lock_tests.SemaphoreTests, "semtype", dm.Semaphore),
    ("BoundedSemaphore", lock_tests.BoundedSemaphoreTests, "semtype", dm.BoundedSemaphore),
    ("Barrier", lock_tests.BarrierTests, "barriertype", dm.Barrier),
]

_PRIVATE = (
    "a private method threading calls on its own locks; a processes lock lives in the "
    "coordinator, where threading's Condition cannot use it"
)
_REPR = "a processes primitive's repr names its hosted object and makes no round trip for state"
_FORK = "a processes primitive lives in the coordinator: a forked child reaches the same one"
_PRIVATE_RLOCK = dict.fromkeys(
    ["test__is_owned", "test_recursion_count", "test_release_save_unacquired"], _PRIVATE
)
_LOCK_REPRS = dict.fromkeys(["test_repr", "test_locked_repr"], _REPR)

# What does not apply, per backend and suite: {test method: reason}.
NOT_APPLICABLE: dict[str, dict[str, dict[str, str]]] = {
    "threads": {
        "ConditionAsRLock": {
            "test_recursion_count": "Condition does not expose _recursion_count()"
        },
        "Event": {
            "test_at_fork_reinit": "reaches into threading.Event's private _cond; dualmode's "
            "Event has a parking lot instead (dualmode/parking_lot.py)"
        },
    },
    "processes": {
        "Lock": {"test_at_fork_reinit": _FORK, **_LOCK_REPRS},
        "RLock": {**_PRIVATE_RLOCK, **_LOCK_REPRS},
        "Event": {"test_at_fork_reinit": _FORK, "test_repr": _REPR},
        "ConditionAsRLock": {**_PRIVATE_RLOCK, **_LOCK_REPRS},
        "Condition": {
            "test_acquire": "Condition(threading.Lock()) on processes raises TypeError by "
            "design: the coordinator hosting the Condition cannot reach a lock of this process "
            "(tests/test_primitive_arguments.py checks the message)"
        },
        "Semaphore": {"test_repr": _REPR},
        "BoundedSemaphore": {"test_repr": _REPR},
        "Barrier": {
            "test_action": "the action runs in the coordinator, on a copy: the test's list in "
            "this process stays empty (docs/primitives.md)",
            "test_repr": _REPR,
        },
    },
}


def _does_not_apply(reason: str) -> Callable[..., None]:
    """A test method that reports *reason* as a skip, as test_threading's own overrides do."""

    @unittest.skip(reason)
    def test(self: unittest.TestCase) -> None: ...

    return test


def _suite(backend: str, name: str, base: Any, attribute: str, cls: Callable[..., Any]) -> type:
    """``class ThreadsLockTests(lock_tests.LockTests): locktype = dm.Lock on threads``."""
    namespace: dict[str, Any] = {
        "__module__": __name__,
        attribute: staticmethod(functools.partial(cls, backend=backend)),
    }
    for test, reason in NOT_APPLICABLE[backend].get(name, {}).items():
        namespace[test] = _does_not_apply(reason)
    suite = type(f"{backend.capitalize()}{name}Tests", (base,), namespace)
    unavailable = dm.available_backends().get(backend)
    skip = unittest.skipIf(unavailable is not None, f"backend {backend!r}: {unavailable}")
    return skip(suite)


# One unittest class per (backend, suite), named like ThreadsLockTests: pytest collects them.
globals().update(
    (made.__name__, made)
    for backend in NOT_APPLICABLE
    for made in (_suite(backend, *suite) for suite in SUITES)
)
