"""Nox sessions for dualmode: tests on every interpreter, lint, typecheck, docs and benchmarks.

``nox`` with no arguments runs lint, typecheck, the four tests sessions and docs (what CI runs,
see ``.ci/run``); ``nox -s bench`` runs the benchmarks, which CI does not.

The tests matrix is CPython 3.11, 3.12, 3.13 and free-threaded 3.13t. Interpreters are found
on ``PATH``; this file first adds pyenv's ``versions/3.*/bin`` and the 3.13t prefix built by
``scripts/provision-python3.13t.sh`` (``/opt/python3.13t`` or ``$DUALMODE_PY313T_PREFIX``)
when they exist. With ``CI`` set, nox fails on a missing interpreter instead of skipping.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13", "3.13t"]
FREE_THREADED = "3.13t"
# Hypothesis 6.156 and newer need a Rust build on 3.13t that cannot fetch its crates here.
FREE_THREADED_PINS = ["hypothesis<6.156"]
# Everything the tests import; on 3.13t none of it may switch the GIL back on.
GIL_CHECK_MODULES = [
    "dualmode",
    "dualmode.backends.serial",
    "dualmode.backends.threads",
    "dualmode.backends.processes",
    "dualmode.pytest_plugin",
    "dualmode.testing",  # the conformance kit, with every rule family
    "hypothesis",
    "anyio",
    "trio",
    "pytest",
    "cloudpickle",
    "rich",
    "sybil",  # runs the docs' code blocks
    "dualmode.analyze.cli",  # dualmode analyze, with its symbol table and rich output
    "dualmode.analyze.watch",
    "pyflakes",  # what the analyzer's unused imports are checked against
]

# CPython warns "The global interpreter lock (GIL) has been enabled to load module ..." when an
# extension that is not free-threading-safe is imported; as an error, the import fails.
GIL_WARNING_IS_ERROR = "error:The global interpreter lock (GIL) has been enabled:RuntimeWarning"


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _add_interpreters_to_path() -> None:
    """Put pyenv's CPython 3 builds and the free-threaded 3.13t build on PATH, if present.

    pyenv's shims only run the versions pyenv has activated, so nox cannot use them to reach
    3.12 or 3.13; the real ``bin`` directories can. They go in front of PATH, newest first.
    """
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            roots.append(run.stdout.strip() if run.returncode == 0 else "")
    roots.append(os.path.expanduser("~/.pyenv"))

    extra: list[str] = []
    prefix = os.environ.get("DUALMODE_PY313T_PREFIX", "/opt/python3.13t")
    if os.path.isdir(os.path.join(prefix, "bin")):
        extra.append(os.path.join(prefix, "bin"))
    for root in dict.fromkeys(r for r in roots if r):
        found = glob.glob(os.path.join(root, "versions", "3.*", "bin"))
        extra.extend(sorted(found, key=_version_key, reverse=True))

    path = os.environ.get("PATH", "").split(os.pathsep)
    new = [d for d in dict.fromkeys(extra) if d not in path]
    if new:
        os.environ["PATH"] = os.pathsep.join([*new, *path])


_add_interpreters_to_path()


def _requirement(extra: str, name: str) -> str:
    """The requirement for *name* as the pyproject extra *extra* spells it (e.g. "ruff>=0.6")."""
    extras = nox.project.load_toml(ROOT / "pyproject.toml")["project"]["optional-dependencies"]
    for req in extras[extra]:
        if re.match(rf"{re.escape(name)}\b(?![-_.])", req, re.IGNORECASE):
            return str(req)
    raise LookupError(f"{name!r} is not in the {extra!r} extra of pyproject.toml")


INTERPRETER_CHECK = """
import sys, sysconfig
want, want_ft = sys.argv[1], sys.argv[2] == "1"
have = "%d.%d" % sys.version_info[:2]
ft = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
print("interpreter:", sys.executable, sys.version.split()[0], "(free-threaded)" * ft)
if (have, ft) != (want, want_ft):
    sys.exit(f"wanted {want}{'t' if want_ft else ''}, got {have}{'t' if ft else ''}")
"""

GIL_CHECK = """
import importlib, sys
if "gil" in sys._xoptions:
    sys.exit("-X gil is set; remove it")
if sys._is_gil_enabled():
    sys.exit("the GIL is enabled before importing anything")
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    if sys._is_gil_enabled():
        sys.exit(f"importing {name} ({module.__file__}) re-enabled the GIL")
print("GIL still disabled after importing", ", ".join(sys.argv[1:]))
"""


def _run_script(session: nox.Session, name: str, source: str, *args: str) -> None:
    """Run *source* with the session's python, the checkout kept off sys.path (``-P``)."""
    script = Path(session.create_tmp()) / name
    script.write_text(source)
    session.run("python", "-P", str(script), *args)


def _check_interpreter(session: nox.Session) -> bool:
    """Fail unless the session's venv runs the requested version and build; True if 3.13t."""
    assert isinstance(session.python, str)
    free_threaded = session.python.endswith("t")
    want = session.python.removesuffix("t")
    _run_script(
        session, "check_interpreter.py", INTERPRETER_CHECK, want, "1" if free_threaded else "0"
    )
    return free_threaded


def _check_gil_stays_off(session: nox.Session) -> None:
    """Fail the session if importing the test stack re-enables the GIL on 3.13t."""
    if os.environ.get("PYTHON_GIL") is not None:
        session.error(
            f"PYTHON_GIL={os.environ['PYTHON_GIL']!r} is set: unset it; the free-threaded "
            "session must show that the GIL stays off without forcing it"
        )
    _run_script(session, "check_gil.py", GIL_CHECK, *GIL_CHECK_MODULES)


def _from_root(arg: str) -> str:
    """A pytest argument naming a path of the checkout (``tests/x.py::t``), made absolute."""
    path = arg.split("::", 1)[0]
    if arg.startswith("-") or not path or not (ROOT / path).exists():
        return arg
    return str(ROOT / arg)


def _install_tests(session: nox.Session, *extras: str) -> dict[str, str]:
    """Install the package (not editable) with the test extras, and the 3.13t pins on 3.13t,
    where the GIL must stay off; the environment the tests then run with."""
    free_threaded = _check_interpreter(session)
    wanted = ",".join(("test", *extras))
    if not free_threaded:
        session.install(f".[{wanted}]")
        return {}
    session.install(f".[{wanted}]", *FREE_THREADED_PINS)
    _check_gil_stays_off(session)
    # A module imported later (by a test, or in a worker process, which inherits the
    # environment) that would switch the GIL back on fails its import instead.
    return {"PYTHONWARNINGS": GIL_WARNING_IS_ERROR}


def _pytest(session: nox.Session, args: list[str], env: dict[str, str]) -> None:
    """pytest over *args*, testing the installed package, not the checkout: from the
    repository root, `python -c` and `python -m` (in a test's subprocess too) would import
    ./dualmode, which has no dualmode.backends until installed. So pytest runs from the
    session's tmp directory."""
    session.chdir(session.create_tmp())
    session.run("pytest", f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"), *args, env=env)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install the package (not editable) and run pytest over tests/ on every backend.

    The dualmode pytest plugin parametrises ``dualmode_backend`` over every available
    backend, so each test that takes it runs on serial, threads and processes. Extra
    arguments go to pytest (paths relative to the repository root work):
    ``nox -s tests-3.13t -- tests/test_parallel.py -k queue -x``.
    """
    env = _install_tests(session)
    _pytest(session, [_from_root(arg) for arg in session.posargs] or [str(ROOT / "tests")], env)


# What `nox -s compat` leaves out: the parts of the suite sized for a workload rather than for an
# interpreter's behaviour. Each of them runs on the oldest and the newest interpreters (3.11, and
# 3.13t without the GIL) in CI; the logic they test does not change between 3.12 and 3.13.
COMPAT_LEAVES_OUT = [
    "-m",
    "not stress and not slow",  # the race loops (tests/test_stress.py), wheel builds
    f"--ignore={ROOT / 'tests' / 'docs'}",  # the docs' examples, each on every backend
    # 100 random programs per rule family and backend, and the planted bugs' shrinking
    "--deselect=tests/test_conformance.py::test_backend_conforms_to_serial",
    "--deselect=tests/test_conformance.py::test_divergence_is_reported_and_shrunk",
    # 1,000 revisions of a 1,000-query graph per backend, measuring memory
    "--deselect=tests/test_incremental.py::test_memory_stays_flat_over_many_revisions",
]


@nox.session(python=["3.12", "3.13"])
def compat(session: nox.Session) -> None:
    """The suite on the interpreters between the oldest and the newest, less its workload-sized
    parts (COMPAT_LEAVES_OUT): what CI runs on 3.12 and 3.13, so that the whole job stays under
    45 minutes. ``nox -s tests-3.12`` runs all of it. Extra arguments go to pytest."""
    env = _install_tests(session)
    _pytest(session, [str(ROOT / "tests"), *COMPAT_LEAVES_OUT, *session.posargs], env)


# `nox -s stress`: the suites whose every test runs on STRESS_THREADS threads at once
# (pytest-run-parallel), each copy STRESS_ITERATIONS times, on the parallel backends.
STRESS_SUITES = [
    "tests/test_threads_backend.py",  # the primitives, with their wake-up paths
    # (not test_lock_tests.py or test_queue_tests.py: CPython's lock and queue tests count the
    # process's threads, and share their setUp's objects between a test's copies)
    "tests/test_parallel.py",
    "tests/test_query.py",
    "tests/test_incremental.py",
]
# test_query.py's and test_incremental.py's databases
STRESS_SHARED_FIXTURES = ["db", "chain", "bounded"]
STRESS_THREADS = 8
# A test's copies run once each: a second iteration would find the fixtures' state of the first
STRESS_ITERATIONS = 1
STRESS_ROUNDS = 3  # test_stress.py's rounds, multiplied
STRESS_SWITCH_INTERVAL = "1e-6"  # seconds, on a GIL build


@nox.session(python=["3.11", FREE_THREADED])
def stress(session: nox.Session) -> None:
    """Races, pushed: on free-threaded 3.13t with the GIL off, and on 3.11 switching threads
    every microsecond. Not part of CI (about 4 minutes per interpreter on 2 cores, with the
    install); run it after a change to a primitive, a backend or the query engine.

    1. tests/test_stress.py's own loops with STRESS_THREADS threads per round and
       STRESS_ROUNDS times the rounds (the ``stress`` fixture reads the environment);
    2. every test of STRESS_SUITES on STRESS_THREADS threads at once, each copy run
       STRESS_ITERATIONS times, on threads and processes (pytest-run-parallel). A test that
       shares state between its copies runs on one thread: one marked ``thread_unsafe``, or
       one taking a fixture of STRESS_SHARED_FIXTURES.

    Every invariant the tests assert must hold every time. Extra arguments go to both runs.
    """
    env = _install_tests(session, "stress")
    env["DUALMODE_STRESS_THREADS"] = str(STRESS_THREADS)
    env["DUALMODE_STRESS_ROUNDS"] = str(STRESS_ROUNDS)
    if "PYTHONWARNINGS" not in env:  # a GIL build
        env["DUALMODE_SWITCH_INTERVAL"] = STRESS_SWITCH_INTERVAL
    _pytest(session, [str(ROOT / "tests" / "test_stress.py"), *session.posargs], env)
    parallel = [f"--parallel-threads={STRESS_THREADS}", f"--iterations={STRESS_ITERATIONS}"]
    backends = ["--dualmode-backend=threads", "--dualmode-backend=processes"]
    # A test that takes one of these fixtures plays a scenario on the fixture's database (one
    # caller, exact execution logs): its copies would share it, so it runs on one thread.
    shared = ["-o", "thread_unsafe_fixtures=" + "\n".join(STRESS_SHARED_FIXTURES)]
    # pytest-timeout's signal cannot stop a test running on the plugin's threads: a test still
    # running after this long has every thread's stack written out, to show what it waits for.
    dump = ["-o", "faulthandler_timeout=300"]
    suites = [str(ROOT / suite) for suite in STRESS_SUITES]
    _pytest(session, [*parallel, *backends, *shared, *dump, *suites, *session.posargs], env)


@nox.session(python=["3.11", FREE_THREADED])
def soak(session: nox.Session) -> None:
    """The tests that run for many minutes (marked ``soak``, skipped otherwise), not part of
    CI: memory over 10,000 revisions of a 1,000-query graph, on every backend. Extra
    arguments go to pytest."""
    env = _install_tests(session)
    _pytest(session, [str(ROOT / "tests"), "-m", "soak", *session.posargs], env)


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    """The suite under coverage, measured as it runs: coverage starts before pytest (so before
    dualmode's pytest plugin imports dualmode), and measures the coordinator, the worker
    processes and the child interpreters the tests start ([tool.coverage.run] in
    pyproject.toml). Prints the report; extra arguments go to pytest. Not part of CI (it runs
    the suite once more, slower); its last figure is in docs/development.md."""
    # Editable: the report names the checkout's files.
    session.install("-e", ".[test,coverage]")
    # An absolute data file: the child interpreters that tests start in a temporary folder
    # (the CLI's, the interrupt tests') inherit it, and write their data where combine looks,
    # rather than in their own working folder (a relative data_file), where it was lost.
    env = {"COVERAGE_FILE": str(ROOT / ".coverage")}
    session.run("coverage", "erase", env=env)
    session.run("coverage", "run", "-m", "pytest", *(session.posargs or ["tests"]), env=env)
    session.run("coverage", "combine", "--quiet", env=env)
    session.run("coverage", "report", env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install(_requirement("dev", "ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over dualmode/ and backends/ (configured in pyproject.toml), then over
    tests/typing/, the user code that shows the installed package type-checks as documented."""
    # The extras give mypy the stubs it checks against (pytest, hypothesis, anyio, trio, rich,
    # watchfiles for dualmode analyze --watch).
    # Not an editable install: mypy cannot follow setuptools' editable import hook, and the
    # user code must find dualmode where a user's project does, in site-packages (py.typed).
    session.install(".[test,bench,watch]", _requirement("dev", "mypy"))
    session.run("mypy", *session.posargs)
    # From outside the checkout (no ./dualmode to find) and with no config file, as a user.
    session.chdir(session.create_tmp())
    session.run("mypy", "--strict", "--config-file=", str(ROOT / "tests" / "typing"))


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the mkdocs site into site/; warnings are errors."""
    session.install(".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


@nox.session(python=["3.11", FREE_THREADED])
def bench(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py script (not part of CI); extra arguments go to each.
    Then write docs/bench.md and its plot from bench_analyze.py's figures (per interpreter)."""
    assert isinstance(session.python, str)
    if session.python.endswith("t"):
        session.install(".[bench]", *FREE_THREADED_PINS)
    else:
        session.install(".[bench]")
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))  # report.py is a helper
    if not scripts:
        session.skip("no benchmarks/bench_*.py scripts")
    published = ROOT / "docs" / "bench"
    for script in scripts:
        extra = ["--publish", str(published)] if script.name == "bench_analyze.py" else []
        session.run("python", str(script), *extra, *session.posargs)
    # docs/bench.md and its plot, from every interpreter's figures so far (the plot needs
    # matplotlib, which may have no wheel for a free-threaded build: then the table only)
    session.run("python", "-m", "pip", "install", "matplotlib", success_codes=[0, 1])
    session.run("python", str(ROOT / "benchmarks" / "publish_analyze.py"), str(published))
