"""The ``dualmode`` command (dualmode/__main__.py): demo, backends, and its error texts."""

from __future__ import annotations

import os
import site
import subprocess
import sys
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
