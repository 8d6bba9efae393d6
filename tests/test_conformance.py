"""The conformance kit (dualmode.testing) on every backend, and the pytest plugin that runs it.

Each backend runs the same random primitive programs as a fresh serial backend and must give the
same results; a deliberately broken backend shows that the machine catches a divergence.
"""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis.stateful import rule

import dualmode as dm
import dualmode.primitives as p
import dualmode.testing as testing
from dualmode.config import load_backend
from dualmode.query.job_table import InProcessJobTable
from dualmode.testing import (
    AtomicIntRules,
    ConformanceMachine,
    Divergence,
    OnceCellRules,
    ParallelRules,
    QueryRules,
    QueueRules,
    RwLockRules,
    SemaphoreRules,
    conformance_machine,
    register_rules,
    run_conformance,
)

pytest_plugins = ["pytester"]

SerialBackend: Any = pytest.importorskip("dualmode.backends.serial").SerialBackend
ThreadsBackend: Any = pytest.importorskip("dualmode.backends.threads").ThreadsBackend

# The processes backend makes an IPC round trip per operation and may start worker processes;
# on 2 shared cores give it room. The settings below carry no example database, so a failure
# found once is not replayed against a different backend.
NO_DATABASE = hypothesis.settings(database=None)
# A planted bug may show as several distinct failures; the test wants one, shrunk. Hypothesis's
# shrinker stops at a local minimum that depends on the random examples it started from (in
# about one run of six it kept redundant steps: 8 and once 12 lines where 5 suffice), so these
# runs are derandomized: the same examples, so the same shrunk program, on every run.
ONE_BUG = hypothesis.settings(database=None, report_multiple_bugs=False, derandomize=True)


@pytest.mark.timeout(300)
def test_backend_conforms_to_serial(dualmode_parallel_backend: str) -> None:
    """Random programs over all 15 primitives, and parallel iteration over generated workloads,
    give the same results as on serial (100 examples per rule set; 2 workers). Serial is the
    reference, so it is not compared with itself: its rules' own checks (a BorrowError where
    a parallel backend would wait, the planted bugs below) are what test it."""
    assert dm.current().name == dualmode_parallel_backend
    assert ParallelRules in testing.default_rules()
    run_conformance(dualmode_parallel_backend, workers=2, max_examples=100, settings=NO_DATABASE)


# -- the machine catches bugs -----------------------------------------------------------------


def _planted(public: type[Any], inner: Any, **bugs: Callable[..., Any]) -> Any:
    """An implementation of *public* forwarding to *inner*, except the methods in *bugs*
    (called as ``bug(inner, *args)``): a backend author's mistake, planted on purpose."""

    def forward(name: str) -> Callable[..., Any]:
        bug = bugs.get(name)
        if bug is not None:
            return lambda self, *args, **kwargs: bug(inner, *args, **kwargs)
        return lambda self, *args, **kwargs: getattr(inner, name)(*args, **kwargs)

    names = {*public.__abstractmethods__, *bugs}
    namespace: dict[str, Any] = {name: forward(name) for name in names}
    namespace["backend"] = property(lambda self: inner.backend)
    return type(f"Planted{public.__name__}", (public,), namespace)()


class OffByOneBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but AtomicInt.fetch_add returns one more than the previous value."""

    name = "off-by-one"

    def create_atomic_int(self, value: int = 0) -> p.AtomicInt:
        inner = super().create_atomic_int(value)
        return _planted(p.AtomicInt, inner, fetch_add=lambda a, delta: a.fetch_add(delta) + 1)  # type: ignore[no-any-return]


class KeepsItemsBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but Queue.shutdown(immediate=True) keeps the queued items (a deep-state bug:
    it shows only after a put, an immediate shutdown and a get)."""

    name = "keeps-items"

    def create_queue(self, maxsize: int = 0) -> p.Queue:
        inner = super().create_queue(maxsize)
        return _planted(p.Queue, inner, shutdown=lambda q, immediate=False: q.shutdown())  # type: ignore[no-any-return]


async def _grant_held(lock: Any, timeout: float | None = None) -> bool:
    return True if lock.locked() else bool(await lock.async_acquire(timeout))


class AsyncGrantsHeldBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but a task's Lock.async_acquire answers True for a lock that is held (the
    sync acquire is right: only the async rules can see it)."""

    name = "async-grants-held"

    def create_lock(self) -> p.Lock:
        return _planted(p.Lock, super().create_lock(), async_acquire=_grant_held)  # type: ignore[no-any-return]


class ReversedChunksBackend(ThreadsBackend):  # type: ignore[misc]
    """Threads, but par_map gets its chunks' results in reverse order."""

    name = "reversed-chunks"

    def map_chunks(self, fn: Any, chunks: Sequence[Sequence[Any]]) -> list[Future[Any]]:
        return super().map_chunks(fn, chunks)[::-1]  # type: ignore[no-any-return]


def _or_none(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception:
        return None


class RemembersCallsBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but a call it has made before (the same function and arguments) is answered at
    once with the earlier outcome and made again only later, when the backend closes (a
    result cache that takes every task for pure): the scope's exit does not wait for it."""

    name = "remembers-calls"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcomes: dict[tuple[Any, ...], Future[Any]] = {}
        self._later: list[tuple[Any, ...]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        call = (fn, *args)
        if call in self._outcomes:
            self._later.append(call)
            return self._outcomes[call]
        self._outcomes[call] = future = super().submit(fn, *args)
        return future  # type: ignore[no-any-return]

    def _shutdown(self) -> None:
        for fn, *args in self._later:
            super().submit(fn, *args)
        # What it remembers holds every program's objects: a closed backend the kit still
        # refers to would keep them for the rest of the session (and slow every gc pass).
        self._later.clear()
        self._outcomes.clear()
        super()._shutdown()


class LosesLastFailuresBackend(ThreadsBackend):  # type: ignore[misc]
    """Threads, but failures in par_map's last chunk are lost (those items give None)."""

    name = "loses-last-failures"

    def map_chunks(self, fn: Any, chunks: Sequence[Sequence[Any]]) -> list[Future[Any]]:
        lossy = functools.partial(_or_none, fn)
        return [*super().map_chunks(fn, chunks[:-1]), *super().map_chunks(lossy, chunks[-1:])]


class ForgetfulJobTable(InProcessJobTable):
    """A job table that never keeps an executed value: every ask executes the body again."""

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        return super().publish(*args, **{**kwargs, "store": False})


# The query engine's planted bugs sit on serial: a bug that shows only in some schedules would
# make Hypothesis's replay of a failure flaky.
class ForgetfulBackend(SerialBackend):  # type: ignore[misc]
    name = "forgetful"

    def create_job_table(self, fallbacks: Any, volatile: Any = frozenset()) -> InProcessJobTable:
        return ForgetfulJobTable(fallbacks, volatile)


class StaleBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but setting an input does not mark what read it: stale values stay green."""

    name = "stale"

    def create_job_table(self, fallbacks: Any, volatile: Any = frozenset()) -> InProcessJobTable:
        table = InProcessJobTable(fallbacks, volatile)
        table._mark_dependents = lambda sources, revision: None  # type: ignore[method-assign]
        table._last_changed = _NeverChanged()  # type: ignore[assignment]
        return table


class _NeverChanged(list[int]):
    def __init__(self) -> None:
        super().__init__([0, 0, 0])

    def __setitem__(self, index: Any, value: Any) -> None:
        pass  # the durability shortcut never sees a change either


class SemaphoreReleasesOneBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but Semaphore.release(n) adds one permit whatever n is."""

    name = "releases-one"

    def create_semaphore(self, value: int = 1) -> p.Semaphore:
        inner = super().create_semaphore(value)
        return _planted(p.Semaphore, inner, release=lambda s, n=1: s.release())  # type: ignore[no-any-return]


class WriteNeverEndsBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but RwLock.release_write keeps the write lock held."""

    name = "write-never-ends"

    def create_rwlock(self) -> p.RwLock:
        return _planted(p.RwLock, super().create_rwlock(), release_write=lambda rw: None)  # type: ignore[no-any-return]


def _claims_stored(cell: Any, value: Any) -> bool:
    cell.set(value)
    return True


class OnceCellAlwaysSetsBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but OnceCell.set says it stored the value when the cell was full already."""

    name = "always-sets"

    def create_once_cell(self) -> p.OnceCell:
        return _planted(p.OnceCell, super().create_once_cell(), set=_claims_stored)  # type: ignore[no-any-return]


class IgnoresFallbacksBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but the job table forgets which queries have a cycle= fallback: a guarded
    cycle raises CycleError instead of giving the fallback values."""

    name = "ignores-fallbacks"

    def create_job_table(self, fallbacks: Any, volatile: Any = frozenset()) -> InProcessJobTable:
        return InProcessJobTable(dict.fromkeys(fallbacks, False), volatile)


class VolatileCachedBackend(SerialBackend):  # type: ignore[misc]
    """Serial, but the job table treats volatile queries as ordinary ones: they are not
    executed again in a new revision."""

    name = "volatile-cached"

    def create_job_table(self, fallbacks: Any, volatile: Any = frozenset()) -> InProcessJobTable:
        return InProcessJobTable(fallbacks, frozenset())


def _retyped(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:
        raise RuntimeError(str(exc)) from None


ProcessesBackend: Any = pytest.importorskip("dualmode.backends.processes").ProcessesBackend


class LosesExceptionTypesBackend(ProcessesBackend):  # type: ignore[misc,valid-type]
    """Processes, but an exception raised in a worker comes back as a RuntimeError with its
    message: the type is lost between processes."""

    name = "loses-exception-types"

    def map_chunks(self, fn: Any, chunks: Sequence[Sequence[Any]]) -> list[Future[Any]]:
        return super().map_chunks(functools.partial(_retyped, fn), chunks)  # type: ignore[no-any-return]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("broken", "where", "rules"),
    [
        (OffByOneBackend, "AtomicInt#", None),
        (KeepsItemsBackend, "Queue#", None),
        (AsyncGrantsHeldBackend, "async_acquire", None),
        (ReversedChunksBackend, "par_", [ParallelRules]),
        (LosesLastFailuresBackend, "ParallelError(", [ParallelRules]),
        (RemembersCallsBackend, "tasks had finished at its exit", [ParallelRules]),
        (ForgetfulBackend, "GraphDatabase#", [QueryRules]),
        (StaleBackend, "GraphDatabase#", [QueryRules]),
        (SemaphoreReleasesOneBackend, "Semaphore#", [SemaphoreRules]),
        (WriteNeverEndsBackend, "RwLock#", [RwLockRules]),
        (OnceCellAlwaysSetsBackend, "OnceCell#", [OnceCellRules]),
        (IgnoresFallbacksBackend, "CycleError", [QueryRules]),
        (VolatileCachedBackend, "GraphDatabase#", [QueryRules]),
        (LosesExceptionTypesBackend, "ParallelError(", [ParallelRules]),
    ],
    ids=[
        "fetch_add-off-by-one",
        "shutdown-keeps-items",
        "async_acquire-grants-a-held-lock",
        "par_map-reverses-chunks",
        "par_map-loses-last-failures",
        "scope-exit-does-not-wait-for-a-task",
        "query-executes-every-time",
        "query-stays-green-after-an-input-change",
        "semaphore-release-n-adds-one",
        "rwlock-write-never-released",
        "once_cell-set-claims-to-store",
        "query-cycle-ignores-fallbacks",
        "volatile-query-cached",
        "processes-loses-exception-types",
    ],
)
def test_divergence_is_reported_and_shrunk(
    broken: type[dm.Backend], where: str, rules: list[type[ConformanceMachine]] | None
) -> None:
    """A planted bug is found, named (step and every backend's outcome) and shrunk. (A bug in
    parallel iteration runs the parallel rules alone: the threads primitives are not at fault.)"""
    with broken(workers=2) as backend, pytest.raises(Divergence) as info:
        run_conformance(backend, rules=rules, max_examples=100, settings=ONE_BUG)
    message = str(info.value)
    assert any(place in message for place in where.split("|")), message
    # Told against serial, or against a fresh database of the same backend (a cycle's values
    # must not depend on which key was asked first).
    assert f"{backend.name}: " in message
    assert "serial: " in message or "a fresh database" in message, message
    program = "\n".join(getattr(info.value, "__notes__", []))
    assert "state.teardown()" in program  # Hypothesis printed the program
    steps = [line for line in program.splitlines() if line.startswith(("state", "databases"))]
    # Shrunk to a handful of steps: these lines are the machine, each step that builds nothing,
    # and teardown; the bugs shrink to 3-7 of them (with Hypothesis 6.155 and 6.170).
    assert len(steps) < 12, program


@pytest.mark.timeout(120)
def test_broken_backend_passes_rules_that_do_not_reach_the_bug() -> None:
    """Rule sets are composable: without AtomicInt rules the broken backend conforms."""
    with OffByOneBackend() as broken:
        run_conformance(broken, rules=[QueueRules], max_examples=30, settings=NO_DATABASE)


@pytest.mark.timeout(120)
def test_machine_as_unittest_case() -> None:
    """conformance_machine() gives a class whose TestCase a third party's suite can collect."""
    with SerialBackend() as a, OffByOneBackend() as b:
        machine = conformance_machine([a, b], rules=[AtomicIntRules])
        machine.TestCase.settings = hypothesis.settings(
            max_examples=200, deadline=None, database=None
        )
        with pytest.raises(Divergence):
            machine.TestCase("runTest").runTest()


def test_registered_rule_mixins_join_the_default_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later rule set (parallel iteration, queries) plugs in with register_rules."""
    monkeypatch.setattr(testing.machine, "RULE_MIXINS", [])  # the registry register_rules fills
    seen: list[tuple[str, ...]] = []

    @register_rules
    class BackendFacts(ConformanceMachine):
        @rule()
        def backend_is_parallel(self) -> None:
            """``backend.parallel``: differs between serial and threads, on purpose."""
            seen.append(tuple(b.name for b in self.backends))
            self.each_backend("parallel", lambda b: b.parallel)

    assert testing.default_rules()[-1] is BackendFacts
    run_conformance("serial", rules=[BackendFacts], max_examples=5, settings=NO_DATABASE)
    assert seen and set(seen) == {("serial", "serial")}
    if "threads" in _usable_and_not()[0]:
        with pytest.raises(Divergence, match=r"parallel:\n  serial: returned False"):
            run_conformance("threads", rules=[BackendFacts], settings=NO_DATABASE)
    with pytest.raises(TypeError, match="not a ConformanceMachine"):
        register_rules(int)  # type: ignore[type-var]


def test_machine_needs_backends() -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        conformance_machine([])


def test_the_kit_names_an_observation_apart_from_a_backend_outcome() -> None:
    """``dualmode.testing.Observation`` is what a backend observed for a step; the old name
    still imports, with a DeprecationWarning, and ``dualmode.backend.Outcome`` keeps its own
    meaning (a backend's ``(ok, value)`` for one call)."""
    assert "Outcome" not in testing.__all__ and "Observation" in testing.__all__
    with pytest.warns(DeprecationWarning, match="renamed dualmode.testing.Observation"):
        assert testing.Outcome is testing.Observation
    assert testing.Observation.of(int, "x").error.__class__ is ValueError
    assert dm.backend.Outcome == tuple[bool, Any]
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        testing.Nothing  # noqa: B018


# -- the pytest plugin ------------------------------------------------------------------------

PLUGIN_TEST = textwrap.dedent(
    """
    import dualmode as dm

    def test_current(dualmode_backend):
        assert dm.current().name == dualmode_backend
        assert dm.Lock().backend.name == dualmode_backend
    """
)


def test_plugin_runs_once_per_selected_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("-v", "--dualmode-backend", "serial,serial")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_current?serial? PASSED*"])


def _usable_and_not() -> tuple[list[str], list[str]]:
    registered = dm.available_backends()
    return [n for n, r in registered.items() if r is None], [n for n, r in registered.items() if r]


@pytest.mark.parametrize("args", [[], ["--dualmode-backend", "all"]], ids=["default", "all"])
def test_plugin_selects_every_registered_backend(
    pytester: pytest.Pytester, args: list[str]
) -> None:
    """By default (or with "all") every registered backend runs; unusable ones are skipped."""
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("-v", "-rs", *args)
    usable, unusable = _usable_and_not()
    result.assert_outcomes(passed=len(usable), skipped=len(unusable))
    result.stdout.fnmatch_lines_random([f"*test_current?{name}? PASSED*" for name in usable])
    result.stdout.fnmatch_lines_random([f"SKIPPED*{name}*unavailable*" for name in unusable])


def test_plugin_fails_an_explicit_unknown_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("--dualmode-backend", "serial", "--dualmode-backend", "nosuch")
    result.assert_outcomes(passed=1, errors=1)  # pytest reports a failing fixture as an error
    result.stdout.fnmatch_lines(["*--dualmode-backend=nosuch is unavailable*choose one of*"])


def test_plugin_restores_the_backend_after_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        PLUGIN_TEST
        + textwrap.dedent(
            """
            def test_after():
                assert dm.current().name == "serial"
            """
        )
    )
    result = pytester.runpytest("-p", "no:randomly", "--dualmode-backend", "serial")
    result.assert_outcomes(passed=2)


PARALLEL_TEST = textwrap.dedent(
    """
    import dualmode as dm

    def test_parallel(dualmode_parallel_backend):
        assert dm.current().name == dualmode_parallel_backend
        assert dm.current().parallel
    """
)


def test_plugin_parallel_fixture_runs_on_every_selected_parallel_backend(
    pytester: pytest.Pytester,
) -> None:
    """dualmode_parallel_backend: the selected backends that run work in parallel."""
    pytester.makepyfile(PARALLEL_TEST)
    usable, unusable = _usable_and_not()
    expected = [n for n in usable if load_backend(n).parallel]
    assert {"threads", "processes"} <= set(expected) and "serial" not in expected
    result = pytester.runpytest("-v", "-rs")
    result.assert_outcomes(passed=len(expected), skipped=len(unusable))
    result.stdout.fnmatch_lines_random([f"*test_parallel?{name}? PASSED*" for name in expected])
    assert "test_parallel[serial]" not in result.stdout.str()


@pytest.mark.parametrize(
    ("selected", "outcomes"),
    [("serial,threads", {"passed": 1}), ("serial", {"skipped": 1})],
    ids=["one-parallel", "none-parallel"],
)
def test_plugin_parallel_fixture_honours_the_selection(
    pytester: pytest.Pytester, selected: str, outcomes: dict[str, int]
) -> None:
    """Only the selected backends run; a selection without a parallel one skips the test."""
    pytester.makepyfile(PARALLEL_TEST)
    result = pytester.runpytest("-v", "-rs", "--dualmode-backend", selected)
    result.assert_outcomes(**outcomes)
    if "skipped" in outcomes:
        result.stdout.fnmatch_lines(["*SKIPPED*empty parameter set*"])


def test_plugin_refuses_both_backend_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_both(dualmode_backend, dualmode_parallel_backend):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*asks for both dualmode_backend and dualmode_parallel_backend*"])


# -- without Hypothesis: the plugin loads, the kit says what to install ---------------------------


def _without_hypothesis(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run *code* in a new interpreter that has this one's packages except Hypothesis.

    Its site-packages is a directory of symbolic links to this interpreter's, less every entry
    named for Hypothesis (the package, its dist-info, the modules of its pytest plugin), added
    with ``site.addsitedir`` under ``-S`` so that its .pth files (an editable install's
    finder) still run. So Hypothesis is absent as it is where nobody installed it: imports find
    nothing and ``importlib.metadata`` lists no Hypothesis entry points for pytest to load. (An
    import blocker on ``sys.meta_path`` is not enough: pytest's assertion rewriter goes before
    it and finds the modules of every pytest11 plugin's distribution.) A venv without
    Hypothesis would need the package index; this takes a second.

    *cwd* must not be the checkout, whose dualmode/ would shadow the installed package.
    """
    site = cwd / "site-packages-without-hypothesis"
    site.mkdir()
    for installed in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
        for entry in Path(installed).iterdir():
            link = site / entry.name
            if "hypothesis" not in entry.name.lower() and not link.exists():
                link.symlink_to(entry)
    prelude = f"import site, sys\nsite.addsitedir({str(site)!r})\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(180)
def test_plugin_loads_and_runs_without_hypothesis(pytester: pytest.Pytester) -> None:
    """Every pytest run of an environment with dualmode loads its plugin: without Hypothesis
    it still loads, and its fixtures work."""
    test_file = pytester.makepyfile(
        PLUGIN_TEST
        + textwrap.dedent(
            """
            import pytest

            def test_hypothesis_is_absent():
                with pytest.raises(ModuleNotFoundError):
                    import hypothesis
            """
        )
    )
    run = _without_hypothesis(
        f"""
        import pytest
        args = ["-p", "no:cacheprovider", "-v", "--dualmode-backend", "serial,threads"]
        code = pytest.main([*args, {test_file.name!r}])
        assert "dualmode.pytest_plugin" in sys.modules  # loaded through its entry point
        sys.exit(code)
        """,
        pytester.path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout


def test_conformance_kit_without_hypothesis_says_what_to_install(tmp_path: Path) -> None:
    """dualmode itself imports and runs without Hypothesis; the kit raises an ImportError
    (ModuleNotFoundError for 'hypothesis', so pytest.importorskip skips) naming the extra."""
    run = _without_hypothesis(
        """
        import dualmode as dm
        import dualmode.backends.threads
        assert dm.par_map(abs, [-1, 2], backend="threads") == [1, 2]
        try:
            from dualmode.testing import run_conformance
        except ModuleNotFoundError as exc:
            print(f"{exc.name}: {exc}")
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("hypothesis: dualmode.testing"), run.stdout
    assert "pip install 'dualmode[testing]'" in run.stdout


def test_hypothesis_is_an_extra_not_a_dependency() -> None:
    """Installed metadata: Hypothesis comes with dualmode[testing] (and so with [test]) only."""
    requires = importlib.metadata.requires("dualmode") or []
    hypothesis_requires = [r for r in requires if r.lower().startswith("hypothesis")]
    assert hypothesis_requires and all('extra == "testing"' in r for r in hypothesis_requires)
    assert any(r.startswith("dualmode[testing]") and 'extra == "test"' in r for r in requires)
