"""scripts/provision-python3.13t.sh: the archive comes from the machine's apt configuration.

The script builds free-threaded CPython from Debian's source package; the deb-src entry it adds
must name the archive that already serves the machine's Debian packages, never a host written
into the repository. These tests run its ``--print-archive`` mode against a stand-in for
``apt-get indextargets`` (the same lines apt prints), so they need neither apt nor root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "provision-python3.13t.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the script is bash")


def _print_archive(tmp_path: Path, targets: str, codename: str = "bookworm") -> str:
    """What the script picks when ``apt-get indextargets`` prints *targets* (one per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    (tmp_path / "targets").write_text(targets)
    fake.write_text(f'#!/bin/sh\n[ "$1" = indextargets ] && cat {tmp_path / "targets"}\n')
    fake.chmod(0o755)
    os_release = tmp_path / "os-release"
    os_release.write_text(f"ID=debian\nVERSION_CODENAME={codename}\n")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "DUALMODE_OS_RELEASE": str(os_release),
    }
    run = subprocess.run(
        ["bash", str(SCRIPT), "--print-archive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return run.stdout.strip()


def test_the_archive_is_the_one_serving_this_release(tmp_path: Path) -> None:
    targets = (
        "deb bookworm-security http://security.example/debian-security/\n"
        "deb nodistro https://nodes.example/node_20.x/\n"
        "deb bookworm http://mirror.example/debian/\n"
        "deb bookworm-updates http://mirror.example/debian/\n"
    )
    assert _print_archive(tmp_path, targets) == "http://mirror.example/debian/"


def test_without_an_entry_for_this_release_a_plain_debian_suite_is_taken(tmp_path: Path) -> None:
    targets = (
        "deb trixie-security http://security.example/debian-security/\n"
        "deb trixie http://other.example/debian/\n"
    )
    assert _print_archive(tmp_path, targets, codename="bookworm") == "http://other.example/debian/"


def test_no_host_name_is_written_into_the_script() -> None:
    hosts = re.findall(r"https?://[^\s'\"]+", SCRIPT.read_text())
    assert hosts == [], f"the script names {hosts}; read the archive from apt's configuration"
