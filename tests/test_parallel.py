"""par_map, par_for_each, join, scope and broadcast: the same results on every backend."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import dualmode as dm

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def fail_on_multiples_of_three(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"item {x} is a multiple of three")
    return x


def test_par_map_keeps_order_whatever_the_chunking(dualmode_backend: str) -> None:
    items = list(range(103))
    expected = [x * x for x in items]
    for chunksize in (None, 1, 7, 103, 1000):
        assert dm.par_map(square, items, chunksize=chunksize) == expected
    assert dm.par_map(square, iter(items)) == expected  # any iterable
    assert dm.par_map(square, []) == []


def test_par_map_runs_every_item_then_raises_every_failure_in_order(
    dualmode_backend: str,
) -> None:
    with pytest.raises(dm.ParallelError) as caught:
        dm.par_map(fail_on_multiples_of_three, range(10), chunksize=4)
    group = caught.value
    assert group.indices == [0, 3, 6, 9]
    assert [str(e) for e in group.exceptions] == [
        f"item {x} is a multiple of three" for x in (0, 3, 6, 9)
    ]
    assert all(type(e) is ValueError for e in group.exceptions)
    assert isinstance(group, ExceptionGroup)


def fail_by_kind(x: int) -> int:
    """Items 3 and 7 raise ValueError, item 5 KeyError; the others return themselves."""
    if x in (3, 7):
        raise ValueError(f"bad value {x}")
    if x == 5:
        raise KeyError(x)
    return x


def test_except_star_keeps_the_index_of_every_failure(dualmode_backend: str) -> None:
    parts: dict[str, dm.ParallelError] = {}
    try:
        dm.par_map(fail_by_kind, range(10), chunksize=2)
    except* ValueError as group:
        assert isinstance(group, dm.ParallelError)
        parts["value"] = group
    except* KeyError as group:
        assert isinstance(group, dm.ParallelError)
        parts["key"] = group
    assert parts["value"].indices == [3, 7]
    assert [str(e) for e in parts["value"].exceptions] == ["bad value 3", "bad value 7"]
    assert parts["key"].indices == [5]
    # A part of the group pickles with its indices, as it does to cross processes.
    copied = pickle.loads(pickle.dumps(parts["value"]))
    assert type(copied) is dm.ParallelError and copied.indices == [3, 7]


def fail_inside(x: int) -> int:
    """Item 1 runs a par_map of its own whose items 3, 5 and 7 fail; item 2 fails alone."""
    if x == 1:
        return sum(dm.par_map(fail_by_kind, range(8)))
    if x == 2:
        raise ValueError("bad value 2")
    return x


def test_split_keeps_indices_through_nested_groups(dualmode_backend: str) -> None:
    with pytest.raises(dm.ParallelError) as caught:
        dm.par_map(fail_inside, range(4), chunksize=1)
    group = caught.value
    group.add_note("the outer call")
    assert group.indices == [1, 2]
    values, rest = group.split(ValueError)
    assert values is not None and rest is not None
    assert values.indices == [1, 2] and rest.indices == [1]
    nested_values, nested_rest = values.exceptions[0], rest.exceptions[0]
    assert isinstance(nested_values, dm.ParallelError)
    assert isinstance(nested_rest, dm.ParallelError)
    assert nested_values.indices == [3, 7] and nested_rest.indices == [5]
    keys = group.subgroup(lambda e: isinstance(e, KeyError))
    assert keys is not None and keys.indices == [1]
    copied = pickle.loads(pickle.dumps(values))
    assert copied.indices == [1, 2] and copied.exceptions[0].indices == [3, 7]
    assert copied.__notes__ == ["the outer call"]


def test_derive_refuses_exceptions_of_another_group() -> None:
    group = dm.ParallelError("2 failed", [ValueError(1), KeyError(2)], [4, 9])
    assert group.derive([group.exceptions[1]]).indices == [9]
    with pytest.raises(ValueError, match=r"exceptions of this group.*ParallelError\(message"):
        group.derive([ValueError("elsewhere")])
    with pytest.raises(ValueError, match="one index per exception"):
        dm.ParallelError("bad", [ValueError()], [0, 1])


def test_scope_failures_carry_their_spawn_positions(dualmode_backend: str) -> None:
    with pytest.raises(dm.ParallelError) as caught, dm.scope() as s:
        for x in range(1, 8):
            s.spawn(fail_on_multiples_of_three, x)
    assert caught.value.indices == [2, 5]
    with pytest.raises(dm.ParallelError) as caught, dm.scope() as s:
        s.spawn(square, 1)
        s.spawn(fail_on_multiples_of_three, 3)
        raise KeyError("body")
    assert caught.value.indices == [-1, 1]


NOT_CALLABLE = [
    pytest.param("par_map", lambda bad: dm.par_map(bad, [1, 2]), "'fn'", id="par_map"),
    pytest.param(
        "par_for_each", lambda bad: dm.par_for_each(bad, [1, 2]), "'fn'", id="par_for_each"
    ),
    pytest.param("join", lambda bad: dm.join(bad, lambda: 1), "'fa'", id="join-fa"),
    pytest.param("join", lambda bad: dm.join(lambda: 1, bad), "'fb'", id="join-fb"),
    pytest.param("broadcast", lambda bad: dm.broadcast(bad), "'fn'", id="broadcast"),
]


@pytest.mark.parametrize(("call", "attempt", "argument"), NOT_CALLABLE)
def test_a_non_callable_is_one_type_error_up_front(
    dualmode_backend: str, call: str, attempt: Callable[[Any], object], argument: str
) -> None:
    with pytest.raises(TypeError) as caught:
        attempt(5)
    assert not isinstance(caught.value, dm.ParallelError)
    assert str(caught.value) == f"{call}() argument {argument} must be callable, got int: 5"


def test_scope_spawn_of_a_non_callable_is_a_type_error(dualmode_backend: str) -> None:
    spawn_error = r"^Scope\.spawn\(\) argument 'fn' must be callable, got str: 'square'"
    with pytest.raises(TypeError, match=spawn_error), dm.scope() as s:
        s.spawn("square", 3)  # type: ignore[arg-type]


def test_items_that_are_not_iterable_or_swapped_arguments(dualmode_backend: str) -> None:
    for call in (dm.par_map, dm.par_for_each):
        with pytest.raises(TypeError, match=r"argument 'items' must be an iterable, got int: 5"):
            call(square, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'fn' must be callable \(the function comes first\)"):
        dm.par_map([1, 2], square)  # type: ignore[arg-type]

    # A TypeError raised while iterating the items is the iterable's own, not a wrong type.
    def broken() -> Any:
        yield 1
        raise TypeError("from the generator")

    with pytest.raises(TypeError, match="from the generator"):
        dm.par_map(square, broken())


def record_pid(x: int) -> int:
    return os.getpid()


def test_par_for_each_runs_every_item(dualmode_backend: str) -> None:
    counter = dm.AtomicInt(0)
    dm.par_for_each(counter.fetch_add, [1] * 50)
    assert counter.load() == 50


def test_bad_chunksize_is_a_clear_error(dualmode_backend: str) -> None:
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="chunksize must be a positive integer"):
            dm.par_map(square, [1, 2], chunksize=bad)  # type: ignore[arg-type]


def test_progress_callable_sees_every_item(dualmode_backend: str) -> None:
    seen: list[tuple[int, int]] = []
    dm.par_map(square, range(40), chunksize=5, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_bar_draws_on_stderr(
    dualmode_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dm.par_map(square, range(20), progress=True) == [x * x for x in range(20)]
    captured = capsys.readouterr()
    assert captured.out == ""
    # Not a terminal: rich draws the finished bar once, named after the function.
    assert captured.err.startswith("square ━") and captured.err.rstrip().endswith("100% 0:00:00")


def without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich unimportable for this test, as if it were not installed."""
    for module in [name for name in sys.modules if name.split(".")[0] == "rich"] + ["rich"]:
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError


def test_progress_without_rich_falls_back_to_a_text_line(
    dualmode_backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    without_rich(monkeypatch)
    assert dm.par_map(square, range(50), chunksize=1, progress=True) == [x * x for x in range(50)]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == "square: 0/50 items (0%)"
    assert lines[-1] == "square: 50/50 items (100%)"
    assert len(lines) <= 11  # not a terminal: at most one line per tenth of the items


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_text_line_redraws_in_place_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_rich(monkeypatch)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dm.par_for_each(square, range(6), chunksize=2, progress=True, backend="serial")
    text = terminal.getvalue()
    assert text.startswith("\rsquare: 0/6 items (0%)")
    assert text.endswith("\rsquare: 6/6 items (100%)\n")
    assert text.count("\n") == 1


def test_join_returns_both_and_reports_both_failures(dualmode_backend: str) -> None:
    assert dm.join(lambda: 1, lambda: 2) == (1, 2)
    with pytest.raises(dm.ParallelError) as caught:
        dm.join(lambda: 1 // 0, lambda: {}["k"])
    assert [type(e) for e in caught.value.exceptions] == [ZeroDivisionError, KeyError]


def test_scope_joins_every_task_and_keeps_successful_results(dualmode_backend: str) -> None:
    handles: list[dm.TaskHandle[Any]] = []
    with pytest.raises(dm.ParallelError) as caught, dm.scope() as s:
        handles = [s.spawn(fail_on_multiples_of_three, x) for x in range(1, 8)]
    assert [str(e) for e in caught.value.exceptions] == [
        "item 3 is a multiple of three",
        "item 6 is a multiple of three",
    ]
    assert all(h.done() for h in handles)
    assert handles[0].result() == 1 and handles[6].result() == 7
    with pytest.raises(ValueError):
        handles[2].result()
    with dm.scope() as s:
        h = s.spawn(square, 12)
        assert h.result() == 144


def test_scope_body_error_comes_first(dualmode_backend: str) -> None:
    with pytest.raises(dm.ParallelError) as caught, dm.scope() as s:
        s.spawn(fail_on_multiples_of_three, 3)
        raise KeyError("body")
    assert [type(e) for e in caught.value.exceptions] == [KeyError, ValueError]
    with pytest.raises(KeyError), dm.scope() as s:
        s.spawn(square, 2)
        raise KeyError("body alone is raised as itself")


def worker_identity() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


def test_broadcast_runs_once_on_every_worker(dualmode_backend: str) -> None:
    backend = dm.current()
    identities = dm.broadcast(worker_identity)
    assert len(identities) == backend.workers
    assert len(set(identities)) == backend.workers


def nested_sum(depth: int) -> int:
    """par_map inside par_map inside par_map, with a join inside a scope at the bottom."""
    if depth == 0:
        with dm.scope() as s:
            h = s.spawn(lambda: dm.join(lambda: 1, lambda: 1))
        a, b = h.result()
        return a + b
    return sum(dm.par_map(nested_sum, [depth - 1] * 3))


class PeakCounter:
    """Samples live threads and child processes in the background; keeps the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def live() -> int:
        return threading.active_count() + len(multiprocessing.active_children())

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.live())

    def __enter__(self) -> PeakCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(60)
@pytest.mark.thread_unsafe(reason="counts the threads of the whole process")
def test_nested_parallelism_finishes_with_bounded_workers(dualmode_backend: str) -> None:
    # A backend of its own, so the counts below are its threads and processes alone.
    with type(dm.current())(workers=2) as backend, dm.use(backend):
        base = PeakCounter.live()
        dm.broadcast(worker_identity)  # starts the pool
        started = PeakCounter.live() - base
        # threads: 2 workers; processes: 2 workers, the coordinator and 2 executor threads.
        assert started <= backend.workers + 3
        begin = time.monotonic()
        with PeakCounter() as peak:
            assert dm.par_map(nested_sum, [3] * 2) == [2 * 27] * 2
        assert time.monotonic() - begin < 30
        # Depth 3 of nesting starts nothing more (the sampler thread is the +1).
        assert peak.peak <= base + started + 1, (peak.peak, base, started)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def identity(x: Any) -> Any:
    return x


def test_processes_unpicklable_item_is_named_before_any_work() -> None:
    ran = dm.AtomicInt(0, backend="processes")

    def count(x: Any) -> Any:
        ran.fetch_add(1)
        return x

    items = [1, 2, Unpicklable(), 4]
    with pytest.raises(TypeError, match=r"item 2 .*Unpicklable") as caught:
        dm.par_map(count, items, chunksize=1, backend="processes")
    assert "pickle" in str(caught.value)
    assert ran.load() == 0


def raise_lookup(x: int) -> int:
    raise LookupError(f"no entry {x}")


def test_processes_worker_exception_keeps_type_message_and_traceback() -> None:
    with pytest.raises(dm.ParallelError) as caught:
        dm.par_map(raise_lookup, [7], backend="processes")
    (exc,) = caught.value.exceptions
    assert type(exc) is LookupError and str(exc) == "no entry 7"
    remote = "".join(str(note) for note in getattr(exc, "__notes__", [])) + str(exc.__cause__)
    assert "raise_lookup" in remote and "Traceback" in remote


def test_processes_lambdas_and_closures_travel() -> None:
    offset = 10
    assert dm.par_map(lambda x: x + offset, [1, 2, 3], backend="processes") == [11, 12, 13]


def test_processes_primitives_work_as_task_arguments() -> None:
    with dm.use("processes"):
        total = dm.AtomicInt(0)
        dm.par_for_each(total.fetch_add, range(100))
        assert total.load() == sum(range(100))
