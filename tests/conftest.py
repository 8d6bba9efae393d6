"""Fixtures shared by dualmode's tests (the plain helpers are in ``_concurrency.py``).

The ``dualmode_backend`` and ``dualmode_parallel_backend`` fixtures come from dualmode's own
pytest plugin (``dualmode.pytest_plugin``), as they do for any project that installs dualmode.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _concurrency import SWITCH_INTERVAL, Stress, switch_interval

from dualmode import config


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``pytest.mark.anyio`` test runs under asyncio and under trio (anyio's plugin)."""
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    """With ``$DUALMODE_SWITCH_INTERVAL`` set (``nox -s stress`` on a GIL build), every test
    runs under that thread switch interval, not only the stress tests.

    Ctrl-C must reach the programs the tests interrupt: a shell starts a background job
    (``pytest &``) with SIGINT ignored, its children inherit that, and a Python started so
    never raises KeyboardInterrupt. The suite takes SIGINT back, so its children start with
    the default (Python's KeyboardInterrupt)."""
    if os.environ.get(SWITCH_INTERVAL):
        sys.setswitchinterval(switch_interval())
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run for many minutes: only when ``-m`` selects them (``nox -s soak``)."""
    if "soak" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a soak test: select it with -m soak (nox -s soak)")
    for item in items:
        if item.get_closest_marker("soak"):
            item.add_marker(skip)


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


@pytest.fixture
def register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``register(dist, {entry_name: "module:Class"}, {module: source})``: install a fake
    distribution that registers backends, importable for this test only (the real way: a
    ``*.dist-info`` directory with an ``entry_points.txt``, put on ``sys.path``)."""
    modules: list[str] = []

    def install(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> Path:
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = [f"{name} = {target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text("[dualmode.backends]\n" + "\n".join(lines) + "\n")
        for module, source in sources.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
        return tmp_path

    yield install
    for module in modules:
        sys.modules.pop(module, None)
