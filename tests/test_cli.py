"""The ``dualmode`` command (dualmode/__main__.py): demo, backends, and its error texts."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import dualmode as dm
from dualmode.__main__ import _selection_lines, main

# The demo selects backends by name, which makes shared instances: close the new ones.
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("close_named_backends")]


def test_backends_lists_every_registered_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in dm.available_backends():
        assert name in out
    assert "auto would choose" in out


def test_demo_gives_the_same_totals_on_every_available_backend(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--iterations", "25"]) == 0
    out = capsys.readouterr().out
    assert "every backend computed the same totals" in out
    assert "100" in out  # 4 tasks x 25 updates


def test_demo_on_one_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", "serial", "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "<SerialBackend name='serial' workers=1>" in out.split("backend in force")[1]
    results = out.split("OnceCell for its value")[1]
    columns = [line for line in results.splitlines() if "parallel" in line]
    assert columns and "no" in columns[0]  # one column, serial's: it ran there alone
    assert "AtomicInt total │ 12" in results  # 4 tasks x 3 updates
    assert "every backend computed the same totals" in out


def test_demo_unknown_backend_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'nope'" in err
    assert "serial" in err


def test_demo_rejects_a_non_positive_iteration_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--iterations", "0"]) == 2
    assert "--iterations must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bogus"], []])
def test_unknown_or_missing_subcommand_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dualmode" in err
    assert ("invalid choice: 'bogus'" in err) if argv else ("required: COMMAND" in err)


INVALID = [
    ("DUALMODE_BACKEND", "bogus", "DUALMODE_BACKEND='bogus': unknown dualmode backend 'bogus'"),
    ("DUALMODE_WORKERS", "0", "DUALMODE_WORKERS='0' is not a worker count"),
]


@pytest.fixture(params=INVALID, ids=[f"{variable}={value}" for variable, value, _ in INVALID])
def invalid_setting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets one invalid environment variable; returns what its error message must say."""
    variable, value, message = request.param
    monkeypatch.setenv(variable, value)
    return str(message)


def test_demo_with_an_invalid_configuration_runs_nothing_and_exits_2(
    invalid_setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--iterations", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dualmode demo: the configuration is invalid")
    assert invalid_setting in captured.err
    assert ("choose one of" in captured.err) or ("give a positive integer" in captured.err)


def test_backends_lists_then_says_which_setting_is_invalid(
    invalid_setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backends"]) == 2
    captured = capsys.readouterr()
    assert all(name in captured.out for name in dm.available_backends())
    assert captured.err.startswith("dualmode backends: the configuration is invalid")
    assert invalid_setting in captured.err


def test_the_command_exits_non_zero_on_an_invalid_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMODE_")}
    for variable, value, message in INVALID:
        proc = subprocess.run(
            [sys.executable, "-m", "dualmode", "demo"],
            cwd=tmp_path,  # not the checkout, which would shadow the installed package
            env={**env, variable: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and proc.stdout == ""


def test_backends_says_a_worker_count_is_unused_by_serial(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUALMODE_WORKERS", "3")
    assert main(["backends"]) == 0
    shown = dict(_selection_lines())  # the table's cells, before rich wraps them
    assert shown["DUALMODE_WORKERS"] == "3 (unused: serial is not parallel, it has 1 worker)"
    monkeypatch.setenv("DUALMODE_BACKEND", "threads")
    assert dict(_selection_lines())["DUALMODE_WORKERS"] == "3"


def test_the_command_and_available_backends_agree_on_a_shadowing_checkout() -> None:
    repo = Path(__file__).resolve().parent.parent
    # -S: no editable-install finder, so the checkout shadows the install (tests/test_config.py).
    probe = (
        "import sys; sys.path[:0] = sys.argv[1:]; import dualmode; from dualmode.__main__ "
        "import main; print(dualmode.available_backends()['serial']); sys.exit(main(['demo']))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(repo), *site.getsitepackages()],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    reason = proc.stdout.strip().removeprefix("backend 'serial' is unavailable: ")
    assert "which shadows any installed copy" in reason
    assert proc.stderr.strip() == f"dualmode demo: {reason}"


# -- the demo's failures, and output without a reader --------------------------------------

FAILING_BACKENDS = """
from dualmode.backends.serial import SerialBackend

class NoAtomics(SerialBackend):
    '''Registers and runs, but its AtomicInt cannot be made.'''
    name = "noatomics"

    def create_atomic_int(self, value=0):
        raise RuntimeError("this backend has no atomics")

class Grounded(SerialBackend):
    name = "grounded"

    @classmethod
    def unavailable_reason(cls):
        return "needs a GPU, and none is attached"
"""


@pytest.fixture
def failing_backends(register: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers "noatomics" (fails in the demo) and "grounded" (unavailable here)."""
    register(
        "failingbackends",
        {"noatomics": "fake_failing:NoAtomics", "grounded": "fake_failing:Grounded"},
        {"fake_failing": FAILING_BACKENDS},
    )
    monkeypatch.setenv("COLUMNS", "400")  # rich: no wrapped cells


@pytest.mark.usefixtures("failing_backends")
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("noatomics", "failed: RuntimeError: this backend has no atomics"),
        ("grounded", "unavailable: needs a GPU, and none is attached"),
    ],
)
def test_demo_reports_a_backend_that_fails_or_cannot_run_and_exits_1(
    name: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--backend", "serial", "--backend", name, "--iterations", "2"]) == 1
    captured = capsys.readouterr()
    result_row = next(line for line in captured.out.splitlines() if "result" in line)
    assert "ok" in result_row and shown in result_row  # serial's column, then the other's
    assert "every backend computed the same totals" not in captured.out
    assert captured.err == "dualmode demo: some backends failed (see the result row)\n"


def test_demo_with_no_usable_backend_says_where_to_look(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dm, "available_backends", lambda: {"serial": "broken here"})
    assert main(["demo"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "dualmode demo: no usable backend; see `dualmode backends` for why\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """``dualmode backends | head -0``: exit status 1 and no traceback, no 'Exception ignored'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMODE_")}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dualmode", "backends"],
            cwd=tmp_path,  # not the checkout, which would shadow the installed package
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.returncode == 1
    assert proc.stderr == ""
