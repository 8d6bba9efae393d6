"""The query engine on serial and threads: memoized, single-flight, cycle-safe.

(The processes backend's coordinator-hosted job table is the rest of issue 4: not yet here.)
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import dualmode as dm

pytestmark = pytest.mark.timeout(30)

IN_PROCESS = ["serial", "threads"]


class Analyzer(dm.Database):
    source = dm.input()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.executed: list[tuple[str, Any]] = []
        self._executed_lock = threading.Lock()

    def _note(self, name: str, key: Any) -> None:
        with self._executed_lock:
            self.executed.append((name, key))

    @dm.query
    def parse(self, path: str) -> str:
        self._note("parse", path)
        return str(self.source[path]).upper()

    @dm.query
    def length(self, path: str) -> int:
        self._note("length", path)
        return len(self.parse(path))

    @dm.query
    def fails(self, n: int) -> int:
        self._note("fails", n)
        raise ValueError(f"no {n}")

    @dm.query(cache_errors=False)
    def flaky(self, n: int) -> int:
        self._note("flaky", n)
        raise ValueError(f"flaky {n}")

    @dm.query
    def ping(self, n: int) -> int:
        return self.pong(n)

    @dm.query
    def pong(self, n: int) -> int:
        return self.ping(n)

    @dm.query(cycle=lambda db, n: -1)
    def guarded(self, n: int) -> int:
        return self.loop(n) + 1

    @dm.query
    def loop(self, n: int) -> int:
        return self.guarded(n) * 10

    @dm.query
    def slow(self, n: int) -> int:
        self._note("slow", n)
        time.sleep(0.2)
        return n * 2


@pytest.fixture(params=IN_PROCESS)
def db(request: pytest.FixtureRequest) -> Analyzer:
    return Analyzer(backend=request.param)


def test_queries_are_memoized_per_key(db: Analyzer) -> None:
    db.source["a.py"] = "abc"
    db.source["b.py"] = "de"
    assert db.length("a.py") == 3 and db.length("a.py") == 3 and db.length("b.py") == 2
    assert db.executed == [
        ("length", "a.py"),
        ("parse", "a.py"),
        ("length", "b.py"),
        ("parse", "b.py"),
    ]
    stats = db.stats()
    assert stats["length"].executions == 2 and stats["length"].hits == 1
    assert stats["parse"].executions == 2 and stats["parse"].misses == 2
    assert db.parse.peek("a.py") == "ABC" and db.parse.peek("c.py", default=0) == 0


def test_errors_are_memoized_unless_asked_not_to(db: Analyzer) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="no 1"):
            db.fails(1)
        with pytest.raises(ValueError, match="flaky 1"):
            db.flaky(1)
    assert db.executed.count(("fails", 1)) == 1
    assert db.executed.count(("flaky", 1)) == 2


def test_bad_keys_and_inputs_are_clear_errors(db: Analyzer) -> None:
    with pytest.raises(TypeError, match=r"query 'parse': argument 0 \(list\) is unhashable"):
        db.parse(["a"])  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=r"input 'source' has no value for 'missing\.py'"):
        db.parse("missing.py")


def test_a_cycle_raises_cycle_error_with_a_canonical_cycle(db: Analyzer) -> None:
    with pytest.raises(dm.CycleError) as from_pong:
        db.pong(1)
    assert from_pong.value.cycle == [("ping", 1), ("pong", 1)]
    with pytest.raises(dm.CycleError) as from_ping:  # memoized, same error
        db.ping(1)
    assert from_ping.value.cycle == from_pong.value.cycle


def test_a_cycle_fallback_gives_values_not_errors(db: Analyzer) -> None:
    assert db.loop(2) == -10  # guarded takes its fallback; loop is computed from it
    assert db.guarded(2) == -1


@pytest.mark.parametrize("repeat", range(5))
def test_eight_threads_asking_one_missing_key_execute_it_once(repeat: int) -> None:
    db = Analyzer(backend="threads")
    start = threading.Barrier(8)
    results: list[int] = []

    def ask() -> None:
        start.wait()
        results.append(db.slow(21))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [42] * 8
    assert db.executed == [("slow", 21)]
    assert db.stats()["slow"].executions == 1


class Crossing(dm.Database):
    @dm.query
    def a(self, k: int) -> int:
        time.sleep(0.1)
        return self.b(k)

    @dm.query
    def b(self, k: int) -> int:
        time.sleep(0.1)
        return self.a(k)


@pytest.mark.parametrize("repeat", range(5))
def test_a_cycle_across_two_threads_raises_in_both_at_once(repeat: int) -> None:
    db = Crossing(backend="threads")
    errors: dict[str, tuple[list[Any], float]] = {}
    start = threading.Barrier(2)

    def ask(name: str) -> None:
        start.wait()
        begin = time.monotonic()
        try:
            getattr(db, name)(7)
        except dm.CycleError as exc:
            errors[name] = (exc.cycle, time.monotonic() - begin)

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert set(errors) == {"a", "b"}
    assert errors["a"][0] == errors["b"][0] == [("a", 7), ("b", 7)]
    assert all(elapsed < 1.0 for _, elapsed in errors.values())
    with pytest.raises(dm.CycleError) as serial:
        Crossing(backend="serial").b(7)
    assert serial.value.cycle == errors["a"][0]


def test_prefetch_computes_missing_keys_in_parallel() -> None:
    db = Analyzer(backend="threads", workers=2)
    begin = time.monotonic()
    db.slow.prefetch(range(4))
    assert time.monotonic() - begin < 0.7  # 4 x 0.2 s on 2 workers, not 0.8 s
    assert sorted(db.executed) == [("slow", n) for n in range(4)]
    assert [db.slow(n) for n in range(4)] == [0, 2, 4, 6]


def test_setting_an_input_inside_a_query_is_refused() -> None:
    class Writer(dm.Database):
        source = dm.input()

        @dm.query
        def write(self, k: int) -> None:
            self.source[k] = 1

    with pytest.raises(RuntimeError, match="set from inside a running query"):
        Writer().write(1)
