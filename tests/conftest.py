"""Fixtures shared by dualmode's tests (the plain helpers are in ``_concurrency.py``).

The ``dualmode_backend`` and ``dualmode_parallel_backend`` fixtures come from dualmode's own
pytest plugin (``dualmode.pytest_plugin``), as they do for any project that installs dualmode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from _concurrency import SWITCH_INTERVAL, Stress, switch_interval

from dualmode import config


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``pytest.mark.anyio`` test runs under asyncio and under trio (anyio's plugin)."""
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    """With ``$DUALMODE_SWITCH_INTERVAL`` set (``nox -s stress`` on a GIL build), every test
    runs under that thread switch interval, not only the stress tests."""
    if os.environ.get(SWITCH_INTERVAL):
        sys.setswitchinterval(switch_interval())


@pytest.fixture
def switch_often() -> Iterator[None]:
    """On a GIL build, switch threads every 10 us (or ``$DUALMODE_SWITCH_INTERVAL``) rather
    than every 5 ms, so races show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval())
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.fixture
def stress(dualmode_parallel_backend: str, switch_often: None) -> Stress:
    """A stress test's backend and sizing, once per selected parallel backend (threads,
    processes; ``--dualmode-backend`` chooses, as for ``dualmode_backend``)."""
    return Stress.on(dualmode_parallel_backend)


@pytest.fixture
def close_named_backends() -> Iterator[None]:
    """Backends selected by name are shared instances: close and forget those the test made,
    so later tests get fresh instances (with their own default worker count)."""
    before = dict(config._instances)
    yield
    for key, backend in list(config._instances.items()):
        if before.get(key) is not backend:
            del config._instances[key]
            backend.close()
