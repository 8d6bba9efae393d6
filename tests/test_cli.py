"""The ``dualmode`` command (dualmode/__main__.py): demo, backends, and its error texts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dualmode as dm
from dualmode import config
from dualmode.__main__ import main

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _close_backends_the_demo_made() -> Iterator[None]:
    """The demo selects backends by name, which makes shared instances; close and forget the
    new ones, so later tests get fresh instances (with their own default worker count)."""
    before = dict(config._instances)
    yield
    for key, backend in list(config._instances.items()):
        if before.get(key) is not backend:
            del config._instances[key]
            backend.close()


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
    assert "threads" not in capsys.readouterr().out.split("backend in force")[-1]


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
