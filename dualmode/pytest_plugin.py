"""pytest plugin: run a test once per dualmode backend.

Installed with dualmode (entry point ``pytest11: dualmode``). A test that asks for the
``dualmode_backend`` fixture runs once per selected backend, with ids like ``test_x[threads]``,
and sees that backend as current (``dm.current()``, ``dm.Lock()``) for its whole run::

    def test_counter(dualmode_backend):
        counter = dm.AtomicInt(0)          # built by the backend under test
        ...

A test that asks for ``dualmode_parallel_backend`` instead runs once per selected backend that
runs work in parallel (``Backend.parallel``: threads, processes, not serial): the fixture for
stress tests, which need callers that really race.

Select backends with ``--dualmode-backend NAME`` (repeat it, or separate names by commas;
``all`` means every registered backend). The default is every registered backend: those
unavailable here (a missing dependency) are skipped with the reason. A backend named
explicitly but unavailable fails its tests with the reason, so a CI job cannot pass by
silently testing nothing.

The deadlock watchdog is on during the session: a test whose threads deadlock on dualmode
primitives fails with :class:`~dualmode.DeadlockError` naming them, rather than hanging until
a timeout kills the run. ``--dualmode-watchdog SECONDS`` sets its limit (default
10; 0 turns it off). The plugin sets it as ``DUALMODE_WATCHDOG``, the default of every backend
made from a name (the fixtures', and ``backend="threads"`` in the threads a test starts; worker
processes inherit it), unless the environment already sets that variable: yours wins.

The plugin needs nothing beyond dualmode itself (not Hypothesis, which only the conformance
kit, ``dualmode.testing``, needs): it loads in every pytest run of an environment that has
dualmode installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .backend import check_watchdog
from .config import WATCHDOG_ENV, available_backends, load_backend, use
from .errors import ConfigError

__all__ = [
    "dualmode_backend",
    "dualmode_parallel_backend",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_unconfigure",
]

OPTION = "--dualmode-backend"
WATCHDOG_OPTION = "--dualmode-watchdog"
WATCHDOG_DEFAULT = 10.0
ALL = "all"
EVERY = "dualmode_backend"
PARALLEL = "dualmode_parallel_backend"


@dataclass(frozen=True)
class _Selection:
    """The backends to run on: names in order, why each is unusable (None: usable), which
    were named explicitly (an explicit name that is unusable fails instead of skipping), and
    which of the names run work in parallel."""

    names: tuple[str, ...]
    reasons: dict[str, str | None]
    explicit: frozenset[str]
    parallel: tuple[str, ...]


_SELECTION = pytest.StashKey[_Selection]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dualmode", "dualmode backends")
    group.addoption(
        OPTION,
        action="append",
        default=[],
        metavar="NAME",
        dest="dualmode_backend",
        help=(
            "run tests that use the dualmode_backend fixture on backend NAME (serial, threads, "
            "processes, a third party's...). Repeat it or give a comma-separated list; 'all' "
            "means every registered backend. Default: every registered backend, skipping those "
            "unavailable here; a backend named explicitly but unavailable fails its tests."
        ),
    )
    group.addoption(
        WATCHDOG_OPTION,
        type=float,
        default=None,
        metavar="SECONDS",
        dest="dualmode_watchdog",
        help=(
            "the deadlock watchdog's limit for the session: threads blocked for good on "
            "dualmode primitives longer than this raise DeadlockError instead of hanging. "
            f"Default: {WATCHDOG_ENV} if set, else {WATCHDOG_DEFAULT:g}; 0 turns it off."
        ),
    )


_SAVED_WATCHDOG = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Set ``DUALMODE_WATCHDOG`` for the session (see the module's docstring)."""
    limit = config.getoption("dualmode_watchdog", None)
    saved = os.environ.get(WATCHDOG_ENV)
    if limit is None and saved is not None:
        return  # the environment's choice stands
    try:
        value = check_watchdog(WATCHDOG_DEFAULT if limit is None else limit)
    except ConfigError as exc:
        raise pytest.UsageError(f"{WATCHDOG_OPTION}: {exc}") from None
    config.stash[_SAVED_WATCHDOG] = saved
    os.environ[WATCHDOG_ENV] = f"{value:g}"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put ``DUALMODE_WATCHDOG`` back as the session found it."""
    if _SAVED_WATCHDOG not in config.stash:
        return
    saved = config.stash[_SAVED_WATCHDOG]
    if saved is None:
        os.environ.pop(WATCHDOG_ENV, None)
    else:
        os.environ[WATCHDOG_ENV] = saved


def _reason(name: str, registered: dict[str, str | None]) -> str | None:
    """None if backend *name* is usable here, else why not (ConfigError's message)."""
    if name in registered:
        return registered[name]
    try:  # not registered under this name: "auto", or a typo whose error lists the choices
        load_backend(name)
    except ConfigError as exc:
        return str(exc)
    return None


def _selection(config: pytest.Config) -> _Selection:
    """The selection from the command line, computed once per session."""
    cached = config.stash.get(_SELECTION, None)
    if cached is not None:
        return cached
    registered = available_backends()
    requested = [
        name.strip()
        for option in config.getoption("dualmode_backend") or []
        for name in str(option).split(",")
        if name.strip()
    ]
    names: list[str] = []
    explicit: set[str] = set()
    for name in requested or [ALL]:
        expanded = list(registered) if name == ALL else [name]
        if name != ALL:
            explicit.add(name)
        names.extend(n for n in expanded if n not in names)
    reasons = {n: _reason(n, registered) for n in names}
    # An unusable backend cannot say whether it is parallel: it stays in, to skip or fail
    # with its reason rather than vanish.
    parallel = tuple(n for n in names if reasons[n] is not None or load_backend(n).parallel)
    selection = _Selection(tuple(names), reasons, frozenset(explicit), parallel)
    config.stash[_SELECTION] = selection
    return selection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [f for f in (EVERY, PARALLEL) if f in metafunc.fixturenames]
    if len(wanted) > 1:
        raise TypeError(
            f"{metafunc.definition.nodeid} asks for both {EVERY} and {PARALLEL}; ask for one "
            f"({PARALLEL} already runs on every selected parallel backend)"
        )
    if wanted:
        selection = _selection(metafunc.config)
        names = selection.parallel if wanted[0] == PARALLEL else selection.names
        metafunc.parametrize(wanted[0], names, indirect=True, ids=names)


def _backend_in_force(request: pytest.FixtureRequest, fixture: str) -> str:
    """The backend name a parametrized fixture got; skips or fails if it is unavailable."""
    selection = _selection(request.config)
    name: str | None = getattr(request, "param", None)
    if name is None:  # requested dynamically (getfixturevalue), so not parametrized
        pytest.fail(f"{fixture} must be requested as a test argument", pytrace=False)
    reason = selection.reasons.get(name)
    if reason is not None:
        if name in selection.explicit:
            pytest.fail(f"{OPTION}={name} is unavailable: {reason}", pytrace=False)
        pytest.skip(f"dualmode backend {name!r} is unavailable: {reason}")
    return name


@pytest.fixture
def dualmode_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of the backend this test runs on, with ``dm.use(name)`` in force meanwhile.

    Skips (default selection) or fails (named by ``--dualmode-backend``) when the backend is
    unavailable here, with the reason.
    """
    name = _backend_in_force(request, EVERY)
    with use(name):
        yield name


@pytest.fixture
def dualmode_parallel_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """As :func:`dualmode_backend`, over the selected backends whose work runs in parallel
    (``Backend.parallel``); a selection without one (``--dualmode-backend serial``) leaves the
    test skipped with an empty parameter set.

    ``dm.use(name)`` is in force in the test's own thread only (it is a context variable):
    threads the test starts should pass ``backend=name`` to what they build.
    """
    name = _backend_in_force(request, PARALLEL)
    with use(name):
        yield name
