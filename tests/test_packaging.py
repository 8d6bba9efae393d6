"""Acceptance: a wheel built from the repository works on its own, outside the checkout.

The wheel maps the top-level ``backends/`` directory to ``dualmode.backends`` and registers the
built-in backends under the entry-point group ``dualmode.backends``; a mistake in either only
shows once the package is installed somewhere else, so this builds the wheel, installs it in a
fresh virtual environment and asks that environment's Python.

Building and installing needs the package index and takes about 10-30 s, so the test is marked
``slow`` (``pytest -m "not slow"`` leaves it out); it runs in every nox tests session.
``DUALMODE_PACKAGING_TEST=0`` skips it (e.g. offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import dualmode as dm

REPO = Path(__file__).resolve().parent.parent
BUILTIN = {"serial", "threads", "processes"}
NOT_SOURCE = (
    ".git",
    ".venv*",
    ".nox",
    "build",
    "dist",
    "site",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
)

PROBE = """
import importlib.metadata, json, sys
import dualmode, dualmode.backends.threads
eps = sorted(ep.name for ep in importlib.metadata.entry_points(group="dualmode.backends"))
print(json.dumps({
    "dualmode": dualmode.__file__,
    "threads": dualmode.backends.threads.__file__,
    "entry_points": eps,
    "available": dualmode.available_backends(),
}))
"""

PROBE_SHADOWED = """
import json, dualmode
print(json.dumps({"dualmode": dualmode.__file__, "available": dualmode.available_backends()}))
"""


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    os.environ.get("DUALMODE_PACKAGING_TEST") == "0",
    reason="DUALMODE_PACKAGING_TEST=0 asks to skip the wheel-in-a-fresh-venv test",
)
def test_wheel_installs_in_fresh_venv_with_backends(tmp_path: Path) -> None:
    # Built from a copy: setuptools builds in the source tree, and a build/ left in the
    # checkout would carry modules deleted since into the next wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheelhouse = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(wheelhouse),
            str(source),
        ],
        cwd=tmp_path,
    )
    wheels = list(wheelhouse.glob("dualmode-*.whl"))
    assert len(wheels) == 1, f"expected one dualmode wheel, found {wheels}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # The plain wheel: Hypothesis is the `testing` extra's, so nothing here needs a Rust build.
    _run([str(python), "-m", "pip", "install", "-q", str(wheels[0])], cwd=tmp_path)

    # Run from tmp_path, so neither the checkout nor its dualmode/ can be imported by accident.
    found = json.loads(_run([str(python), "-c", PROBE], cwd=tmp_path).splitlines()[-1])
    site = Path(found["dualmode"]).resolve().parent.parent
    assert venv.resolve() in site.parents, f"dualmode imported from {found['dualmode']}"
    assert Path(found["threads"]).resolve().parent == site / "dualmode" / "backends"
    assert set(found["entry_points"]) >= BUILTIN
    assert set(found["available"]) >= BUILTIN
    assert found["available"]["serial"] is None
    assert found["available"]["threads"] is None

    # From the repository root the checkout's dualmode/ shadows the wheel; both the library
    # and the command say so (not "reinstall the package", which would not help).
    shadowed = json.loads(_run([str(python), "-c", PROBE_SHADOWED], cwd=REPO).splitlines()[-1])
    assert Path(shadowed["dualmode"]).resolve() == REPO / "dualmode" / "__init__.py"
    for name in BUILTIN:
        assert "which shadows any installed copy" in shadowed["available"][name]
    command = subprocess.run(
        [str(python), "-m", "dualmode", "backends"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert command.returncode == 1
    assert "which shadows any installed copy" in command.stderr


def test_dask_is_advertised_only_once_a_dask_backend_exists() -> None:
    # The metadata and the docs may promise what the registry has, nothing more.
    registered = set(dm.available_backends())
    if "dask" in registered:
        pytest.skip("a dask backend is registered: saying so is true")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    mkdocs = (REPO / "mkdocs.yml").read_text()
    texts = {
        "pyproject.toml description": pyproject["project"]["description"],
        "mkdocs.yml": mkdocs,
        "README.md": (REPO / "README.md").read_text(),
        **{f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md"))},
    }
    mentions = [where for where, text in texts.items() if "dask" in text.lower()]
    assert mentions == [], f"dask is mentioned in {mentions} but no dask backend is registered"
