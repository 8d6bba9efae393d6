"""Choosing the backend (docs/backends.md): explicit > use > configure > environment > serial.

Third-party backends are registered here the real way: a ``*.dist-info`` directory with an
``entry_points.txt`` in a temporary directory put on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import site
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _concurrency import in_thread

import dualmode as dm
import dualmode.config as config
from dualmode import Backend, ConfigError

pytestmark = pytest.mark.timeout(60)

pytest.importorskip("dualmode.backends.serial")

AVAILABLE = {name for name, reason in dm.available_backends().items() if reason is None}
needs_threads = pytest.mark.skipif("threads" not in AVAILABLE, reason="threads unavailable")

ALT_BACKEND = """
from dualmode.backends.serial import SerialBackend

class AltSerial(SerialBackend):
    '''The serial backend under another name: a working third-party backend.'''
    name = "altserial"
"""


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from no configuration and leaves none behind, nor shared instances."""
    monkeypatch.delenv(config.BACKEND_ENV, raising=False)
    monkeypatch.delenv(config.WORKERS_ENV, raising=False)
    dm.configure()
    before = set(config._instances)
    yield
    dm.configure()
    for key in set(config._instances) - before:
        config._instances.pop(key).close()


Register = Callable[..., Path]


@pytest.fixture
def altserial(register: Register) -> str:
    """A working third-party backend named "altserial" (the serial backend renamed)."""
    register(
        "altbackend", {"altserial": "fake_alt_backend:AltSerial"}, {"fake_alt_backend": ALT_BACKEND}
    )
    return "altserial"


# -- precedence -------------------------------------------------------------------------------


def test_default_is_serial() -> None:
    backend = dm.current()
    assert (backend.name, backend.workers, backend.parallel) == ("serial", 1, False)


def test_environment_selects_the_backend(monkeypatch: pytest.MonkeyPatch, altserial: str) -> None:
    monkeypatch.setenv("DUALMODE_BACKEND", f" {altserial} ")
    assert dm.current().name == "altserial"
    assert dm.Lock().backend.name == "altserial"


@needs_threads
def test_environment_sets_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALMODE_BACKEND", "threads")
    monkeypatch.setenv("DUALMODE_WORKERS", "3")
    backend = dm.current()
    assert (backend.name, backend.workers, backend.parallel) == ("threads", 3, True)


def test_configure_beats_environment(monkeypatch: pytest.MonkeyPatch, altserial: str) -> None:
    monkeypatch.setenv("DUALMODE_BACKEND", altserial)
    dm.configure(backend="serial")
    assert dm.current().name == "serial"
    dm.configure()  # forget: the environment rules again
    assert dm.current().name == "altserial"


def test_use_beats_configure(altserial: str) -> None:
    dm.configure(backend=altserial)
    with dm.use("serial") as backend:
        assert dm.current() is backend
        assert backend.name == "serial"
    assert dm.current().name == "altserial"


def test_explicit_backend_beats_use(altserial: str) -> None:
    with dm.use(altserial):
        assert dm.Lock().backend.name == "altserial"
        assert dm.Lock(backend="serial").backend.name == "serial"
        assert dm.Queue(2, backend="serial").backend.name == "serial"


def test_explicit_backend_instance_is_used_as_is() -> None:
    own = type(dm.current())()  # a private instance, not the shared one
    try:
        with dm.use("serial"):
            assert dm.current() is not own
            assert dm.AtomicInt(5, backend=own).backend is own
        with dm.use(own) as used:
            assert used is own and dm.Event().backend is own
    finally:
        own.close()
    with pytest.raises(ConfigError, match="closed"):
        dm.Lock(backend=own)


def test_primitive_keeps_the_backend_it_was_built_with(altserial: str) -> None:
    with dm.use(altserial):
        lock = dm.Lock()
    assert dm.current().name == "serial"
    assert lock.backend.name == "altserial"


# -- use: scoped, nested, per thread and per task ---------------------------------------------


def test_use_nests_and_restores(altserial: str) -> None:
    with dm.use(altserial):
        with dm.use("serial"):
            assert dm.current().name == "serial"
            with dm.use(altserial):
                assert dm.current().name == "altserial"
            assert dm.current().name == "serial"
        assert dm.current().name == "altserial"
    assert dm.current().name == "serial"


def test_use_restores_on_exception(altserial: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), dm.use(altserial):
        assert dm.current().name == "altserial"
        raise Boom
    assert dm.current().name == "serial"


def test_use_is_not_seen_by_other_threads(altserial: str) -> None:
    with dm.use(altserial):
        assert in_thread(lambda: dm.current().name) == "serial"
        assert dm.current().name == "altserial"


def test_configure_is_seen_by_every_thread(altserial: str) -> None:
    dm.configure(backend=altserial)
    assert in_thread(lambda: dm.current().name) == "altserial"


def test_use_is_per_task(altserial: str) -> None:
    async def task(name: str, started: asyncio.Event, other: asyncio.Event) -> str:
        with dm.use(name):
            started.set()
            await other.wait()  # both tasks are inside their `use` now
            return dm.current().name

    async def main() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(task(altserial, a, b), task("serial", b, a)))

    assert asyncio.run(main()) == ["altserial", "serial"]


# -- current() --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AVAILABLE))
def test_current_describes_the_backend(name: str) -> None:
    with dm.use(name, workers=1) as backend:
        current = dm.current()
        assert current is backend
        assert current.name == name
        assert current.workers == 1
        assert current.parallel is (name != "serial")
        assert isinstance(current, Backend) and not current.closed


@needs_threads
def test_default_workers_are_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Backend, "default_workers", classmethod(lambda cls: 5))
    # A new instance: the shared one for ("threads", None) may predate the monkeypatch.
    with config.load_backend("threads")() as backend:
        assert backend.workers == 5


# -- "auto" -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_threaded", "cpus", "expected"),
    [(True, 4, "threads"), (True, 1, "threads"), (False, 4, "processes"), (False, 1, "serial")],
)
def test_auto_rule(
    monkeypatch: pytest.MonkeyPatch, free_threaded: bool, cpus: int, expected: str
) -> None:
    monkeypatch.setattr(config, "_free_threaded", lambda: free_threaded)
    monkeypatch.setattr(Backend, "default_workers", classmethod(lambda cls: cpus))
    assert config._auto_name() == expected
    if expected not in AVAILABLE:
        pytest.skip(f"{expected} is not available here")
    monkeypatch.setenv("DUALMODE_BACKEND", "auto")
    monkeypatch.setenv("DUALMODE_WORKERS", "1")  # start as little as possible
    assert dm.current().name == expected
    with dm.use("auto", workers=1) as backend:
        assert backend.name == expected


def test_auto_rule_on_this_interpreter() -> None:
    gil_disabled = not getattr(sys, "_is_gil_enabled", lambda: True)()
    expected = config._auto_name()
    if gil_disabled:
        assert expected == "threads"
    else:
        assert expected == ("processes" if Backend.default_workers() > 1 else "serial")


# -- errors -----------------------------------------------------------------------------------


def test_unknown_backend_lists_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    for attempt in (
        lambda: dm.use("nosuch").__enter__(),
        lambda: dm.configure(backend="nosuch"),
        lambda: dm.Lock(backend="nosuch"),
    ):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert "'nosuch'" in message
        assert all(name in message for name in ("auto", "serial", "threads", "processes"))
    monkeypatch.setenv("DUALMODE_BACKEND", "nosuch")
    with pytest.raises(ConfigError, match=r"DUALMODE_BACKEND='nosuch'.*choose one of"):
        dm.current()


def test_configure_checks_at_once() -> None:
    with pytest.raises(ConfigError, match="needs a backend"):
        dm.configure(workers=2)
    with pytest.raises(ConfigError):
        dm.configure(backend="nosuch")
    assert dm.current().name == "serial"  # a refused configure() changes nothing


def test_backend_spec_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"backend name .*or a dualmode\.Backend instance"):
        dm.Lock(backend=3)  # type: ignore[arg-type]


def test_instance_with_conflicting_workers() -> None:
    with dm.use("serial") as backend, pytest.raises(ConfigError, match="conflicts"):
        dm.use(backend, workers=4).__enter__()


BAD_WORKERS = [0, -1, "x", "", "2", 1.5, True]


@pytest.mark.parametrize("workers", BAD_WORKERS, ids=repr)
def test_bad_worker_count(workers: object) -> None:
    with pytest.raises(ConfigError, match=r"not a worker count: give a positive integer"):
        dm.use("serial", workers=workers).__enter__()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"positive integer"):
        dm.configure(backend="serial", workers=workers)  # type: ignore[arg-type]
    assert dm.current().name == "serial"


@pytest.mark.parametrize("workers", ["0", "-1", "x", "2.5"])
def test_bad_worker_count_in_environment(monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    monkeypatch.setenv("DUALMODE_WORKERS", workers)
    pattern = rf"DUALMODE_WORKERS='?{re.escape(workers)}'? is not a worker count.*positive integer"
    with pytest.raises(ConfigError, match=pattern):
        dm.current()


def test_good_worker_count_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALMODE_WORKERS", " 3 ")
    assert dm.current().name == "serial"  # serial accepts and checks it, keeps one worker
    assert dm.current().workers == 1
    monkeypatch.setenv("DUALMODE_BACKEND", "threads")
    assert (dm.current().name, dm.current().workers) == ("threads", 3)  # " 3 " read as 3


def test_worker_count_as_text_is_refused_outside_the_environment() -> None:
    message = r"workers='2' is not a worker count: .*an int, not text.*DUALMODE_WORKERS"
    with pytest.raises(ConfigError, match=message):
        dm.use("serial", workers="2").__enter__()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        dm.configure(backend="serial", workers="2")  # type: ignore[arg-type]

    class Empty(dm.Database):
        pass

    with pytest.raises(ConfigError, match=message):
        Empty(backend="serial", workers="2")  # type: ignore[arg-type]


def test_serial_accepts_any_worker_count_and_has_one_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Documented: one program, run with workers=4 on each backend, runs on serial too.
    with dm.use("serial", workers=4) as backend:
        assert (backend.name, backend.workers) == ("serial", 1)
    dm.configure(backend="serial", workers=4)
    assert dm.current().workers == 1
    dm.configure()
    monkeypatch.setenv("DUALMODE_WORKERS", "4")
    assert (dm.current().name, dm.current().workers) == ("serial", 1)


# -- third-party backends through real entry points --------------------------------------------


def test_backend_with_a_missing_dependency(register: Register) -> None:
    register(
        "fakebackend",
        {"fake": "fake_needs_dep:FakeBackend"},
        {"fake_needs_dep": "import some_missing_package_xyz\n"},
    )
    reason = dm.available_backends()["fake"]
    assert reason is not None and "some_missing_package_xyz" in reason
    assert dm.available_backends()["serial"] is None
    with pytest.raises(ConfigError, match="some_missing_package_xyz"):
        dm.use("fake").__enter__()
    with pytest.raises(ConfigError, match="some_missing_package_xyz"):
        dm.configure(backend="fake")
    assert "fake_needs_dep" not in sys.modules


def test_working_third_party_backend(altserial: str) -> None:
    assert dm.available_backends()[altserial] is None
    with dm.use(altserial) as backend:
        assert type(backend).__name__ == "AltSerial"
        assert dm.current() is backend
        lock = dm.Lock()
        assert lock.backend is backend and lock.acquire(blocking=False)
    unknown = pytest.raises(ConfigError, match=r"choose one of: .*altserial")
    with unknown:
        dm.use("altserial2").__enter__()


def test_entry_point_that_is_not_a_backend(register: Register) -> None:
    register(
        "notabackend", {"bogus": "fake_not_backend:Thing"}, {"fake_not_backend": "Thing = 1\n"}
    )
    reason = dm.available_backends()["bogus"]
    assert reason is not None and "not a dualmode.Backend subclass" in reason
    with pytest.raises(ConfigError, match=r"not a dualmode\.Backend subclass"):
        dm.use("bogus").__enter__()


def test_backend_that_reports_itself_unavailable(register: Register) -> None:
    source = ALT_BACKEND + textwrap.dedent(
        """
        class Grounded(AltSerial):
            name = "grounded"

            @classmethod
            def unavailable_reason(cls):
                return "needs a GPU, and none is attached"
        """
    )
    register("groundedbackend", {"grounded": "fake_grounded:Grounded"}, {"fake_grounded": source})
    reason = dm.available_backends()["grounded"]
    assert reason is not None and "needs a GPU" in reason
    with pytest.raises(ConfigError, match="needs a GPU"):
        dm.use("grounded").__enter__()


# -- a source checkout that shadows the install -----------------------------------------------

REPO = Path(__file__).resolve().parent.parent

# Run with -S: no site initialisation, so no editable-install finder maps backends/ to
# dualmode.backends; the checkout comes first on sys.path, as it does for `python -c` or a
# script run from the repository root in front of a non-editable install.
SHADOWED = """
import json, sys
sys.path[:0] = sys.argv[1:]
import dualmode
print(json.dumps({"file": dualmode.__file__, "available": dualmode.available_backends()}))
try:
    dualmode.current()
except dualmode.ConfigError as exc:
    print(json.dumps(str(exc)))
"""


def _from_checkout(checkout: Path, *paths: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [sys.executable, "-S", "-c", SHADOWED, str(checkout), *paths],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DUALMODE_")},
    )
    assert proc.returncode == 0, proc.stderr
    found, error = proc.stdout.splitlines()
    return json.loads(found), json.loads(error)


def test_installed_backends_shadowed_by_the_checkout_say_so() -> None:
    found, error = _from_checkout(REPO, *site.getsitepackages())
    assert Path(str(found["file"])).resolve().parent == REPO / "dualmode"
    available = found["available"]
    assert isinstance(available, dict) and {"serial", "threads", "processes"} <= set(available)
    for name in ("serial", "threads", "processes"):
        reason = available[name]
        assert f"source checkout {REPO / 'dualmode'}, which shadows any installed copy" in reason
        assert "pip install -e" in reason and "reinstall" not in reason
    assert "which shadows any installed copy" in error and "DUALMODE_BACKEND" in error


def test_a_checkout_without_any_install_says_so(tmp_path: Path) -> None:
    # A fresh clone (no dualmode.egg-info beside the package) and the installed dependencies,
    # without dualmode's own distribution or its finder.
    checkout, dependencies = tmp_path / "clone", tmp_path / "site"
    checkout.mkdir()
    dependencies.mkdir()
    for part in ("dualmode", "backends"):
        (checkout / part).symlink_to(REPO / part)
    for site_dir in map(Path, site.getsitepackages()):
        for entry in site_dir.iterdir():
            if "dualmode" not in entry.name and not (dependencies / entry.name).exists():
                (dependencies / entry.name).symlink_to(entry)
    found, error = _from_checkout(checkout, str(dependencies))
    assert found["available"] == {}
    assert "unknown dualmode backend 'serial'" in error
    assert "No backend is registered" in error and "which shadows any installed copy" in error
