"""CPython's own ``Lib/test/test_queue.py`` (its ``queue.Queue`` tests) against ``dm.Queue``.

As for tests/test_lock_tests.py: imported from the running interpreter's own ``test`` package
(3.13's version also tests ``shutdown``), never copied. One class per parallel backend sets
the suite's ``queue`` module to a namespace whose ``Queue`` is dualmode's. Serial is not run:
every test there blocks on several threads.
"""

from __future__ import annotations

import functools
import queue
import types
import unittest
from typing import Any

import pytest

import dualmode as dm

test_queue: Any = pytest.importorskip(
    "test.test_queue",
    reason="this interpreter ships without CPython's test package (test.test_queue)",
)

pytestmark = pytest.mark.timeout(300)


def _suite(backend: str) -> type:
    namespace = types.SimpleNamespace(
        Queue=functools.partial(dm.Queue, backend=backend),
        Empty=queue.Empty,  # what dm.Queue raises (the suite's py_queue is a fresh copy)
        Full=queue.Full,
        ShutDown=dm.QueueShutDown,
    )
    suite = type(
        f"{backend.capitalize()}QueueTest",
        (test_queue.QueueTest, unittest.TestCase),
        {"__module__": __name__, "queue": namespace},
    )
    unavailable = dm.available_backends().get(backend)
    return unittest.skipIf(unavailable is not None, f"backend {backend!r}: {unavailable}")(suite)


ThreadsQueueTest = _suite("threads")
ProcessesQueueTest = _suite("processes")
