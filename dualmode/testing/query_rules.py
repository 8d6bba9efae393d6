"""The query rule family: generated graphs of pure queries over inputs, asked in concurrent
batches and single calls between input changes.

Every backend must give the same values, the same exceptions (a :class:`~dualmode.CycleError`
with the same ``.cycle``) and the same executions: each (query, key) at most once per revision,
and after an input change exactly the same ones re-executed as on the reference (the guarantees
of docs/queries.md#what-is-guaranteed). See docs/architecture.md#the-conformance-kit.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import Bundle, MultipleResults, rule

from .. import parallel
from ..config import BackendSpec
from ..query import Database, Durability, input, query
from .machine import EVENT_LOOPS, ConformanceMachine, Instance, in_task, register_rules
from .observation import Divergence, Failure

__all__ = [
    "INPUTS",
    "GraphDatabase",
    "QueryGraph",
    "QueryRules",
    "ask_every_node",
    "ask_in_tasks",
    "ask_node",
    "query_graphs",
]

# A generated program of pure queries over small int keys and three inputs. The cycles it makes
# are rings that are wholly guarded (every member has a cycle= fallback), not at all, or (3 or
# more members) partly: whatever the schedule, every guarded member takes its fallback and the
# others are computed from them, or every member gets the same CycleError
# (docs/queries.md#what-is-guaranteed). A member of a partly guarded ring without a fallback
# may execute twice in a revision (the request that closed the ring runs it again): its
# executions are compared as a set.

#: How many inputs a GraphDatabase has: ``inp[0]`` .. ``inp[INPUTS - 1]``.
INPUTS = 3


@dataclass(frozen=True)
class QueryGraph:
    """The queries of a :class:`GraphDatabase`. Node ``i``:

    - if ``i in reads``, first reads input ``inp[i % INPUTS]`` (call it ``v``): if ``v == 3``
      it raises ``ValueError`` there; if ``v`` is odd it skips its last dependency (unless it
      is on a ring), so the graph changes with the inputs;
    - reads ``deps[i]`` in order; a node in ``catches`` turns their exceptions into values;
    - raises ``ValueError`` if ``i in fails``;
    - is asked through the query with a ``cycle=`` fallback (``-1 - i``) if ``i in guarded``,
      through a ``volatile=True`` query if ``i in volatile``, else through a plain one;
    - sleeps 2 ms before each read if ``i in slow``, so that concurrent requests interleave.

    ``ring`` lists the nodes that lie on the generated cycles; ``reruns`` those of them, on a
    partly guarded ring, that have no fallback (they may execute twice in a revision).
    """

    deps: tuple[tuple[int, ...], ...]
    fails: frozenset[int] = frozenset()
    catches: frozenset[int] = frozenset()
    guarded: frozenset[int] = frozenset()
    slow: frozenset[int] = frozenset()
    reads: frozenset[int] = frozenset()
    volatile: frozenset[int] = frozenset()
    ring: frozenset[int] = frozenset()
    reruns: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        edges = ", ".join(f"{i}->{list(d)}" for i, d in enumerate(self.deps))
        names = ("fails", "catches", "guarded", "slow", "reads", "volatile", "ring", "reruns")
        flags = [f"{n}={sorted(getattr(self, n))}" for n in names if getattr(self, n)]
        return f"QueryGraph({'; '.join([edges, *flags])})"


class GraphDatabase(Database):
    """The database the query rules run: three queries over the nodes of a
    :class:`QueryGraph`, its inputs ``inp[0..2]`` (0 until set), and a log of the executions
    since it was last read (a dualmode Mutex, so worker processes append to it too)."""

    inp = input()

    def __init__(self, graph: QueryGraph, *, backend: BackendSpec | None = None) -> None:
        super().__init__(backend=backend)
        self.graph = graph
        self.log = self.backend.create_mutex(())
        for slot in range(INPUTS):
            self.inp[slot] = 0

    def take_executions(self) -> list[tuple[str, int]]:
        """The (query, key) executed since the last call, sorted; those of ``graph.reruns``
        once each, however many times they ran."""
        with self.log.lock() as guard:
            log, guard.value = guard.value, ()
        reruns = {e for e in log if e[1] in self.graph.reruns}
        return sorted([e for e in log if e not in reruns] + list(reruns))

    def ask(self, i: int) -> Any:
        """Node *i* through the query the graph says."""
        graph = self.graph
        if i in graph.guarded:
            return self.guarded(i)
        return (self.changing if i in graph.volatile else self.node)(i)

    async def async_ask(self, i: int) -> Any:
        """:meth:`ask` from async code: the same query's ``async_get``."""
        graph = self.graph
        if i in graph.guarded:
            return await self.guarded.async_get(i)
        return await (self.changing if i in graph.volatile else self.node).async_get(i)

    def _evaluate(self, name: str, i: int) -> int:
        graph = self.graph
        with self.log.lock() as guard:
            guard.value = (*guard.value, (name, i))
        deps = graph.deps[i]
        total = i
        if i in graph.reads:
            value = self.inp[i % INPUTS]
            if value == 3:
                raise ValueError(f"node {i} read 3")
            if value % 2 and i not in graph.ring:
                deps = deps[:-1]
            total += value
        for j in deps:
            if i in graph.slow:
                time.sleep(0.002)
            if i in graph.catches:
                try:
                    value = self.ask(j)
                except Exception as exc:
                    value = len(type(exc).__name__) + len(str(exc))
            else:
                value = self.ask(j)
            total = (total * 31 + value) % 1_000_003
        if i in graph.fails:
            raise ValueError(f"node {i} fails")
        return total

    @query
    def node(self, i: int) -> int:
        return self._evaluate("node", i)

    @query(cycle=lambda db, i: -1 - i)
    def guarded(self, i: int) -> int:
        return self._evaluate("guarded", i)

    @query(volatile=True)
    def changing(self, i: int) -> int:
        return self._evaluate("changing", i)


@st.composite
def query_graphs(draw: st.DrawFn, max_nodes: int = 12) -> QueryGraph:
    """Graphs of pure nodes (a DAG), rings (cycles, each wholly guarded, not at all or, with 3
    or more members, partly, whose members also read pure nodes before or after their ring
    edge), and outer nodes that read any of them without closing new cycles."""
    n_pure = draw(st.integers(0, 4))
    ring_sizes = draw(st.lists(st.integers(1, 4), max_size=2))
    n_outer = min(4, draw(st.integers(0, max(0, max_nodes - n_pure - sum(ring_sizes)))))
    pure = list(range(n_pure))
    deps: list[list[int]] = [
        draw(st.lists(st.sampled_from(pure[i + 1 :]), max_size=3)) if i + 1 < n_pure else []
        for i in pure
    ]
    guarded: set[int] = set()
    members: list[int] = []
    reruns: set[int] = set()
    for size in ring_sizes:
        ring = list(range(len(deps), len(deps) + size))
        ring_guarded = set(draw(_ring_guards(size)))
        for k, i in enumerate(ring):
            own = draw(st.lists(st.sampled_from(pure), max_size=2)) if pure else []
            own.insert(draw(st.integers(0, len(own))), ring[(k + 1) % size])
            deps.append(own)
            if k in ring_guarded:
                guarded.add(i)
            elif ring_guarded:
                reruns.add(i)
        members += ring
    first_outer = len(deps)
    for i in range(first_outer, first_outer + n_outer):
        choices = pure + members + list(range(i + 1, first_outer + n_outer))
        deps.append(draw(st.lists(st.sampled_from(choices), max_size=3)) if choices else [])
    if not deps:
        deps.append([])
    nodes = st.sampled_from(range(len(deps)))
    off_ring = [i for i in range(len(deps)) if i not in members]
    some_off_ring = st.sets(st.sampled_from(off_ring), max_size=3) if off_ring else st.just(set())
    return QueryGraph(
        deps=tuple(tuple(d) for d in deps),
        fails=frozenset(draw(st.sets(nodes, max_size=3))),
        catches=frozenset(draw(some_off_ring)),
        guarded=frozenset(guarded),
        slow=frozenset(draw(st.sets(nodes, max_size=len(deps)))),
        reads=frozenset(draw(st.sets(nodes, max_size=len(deps)))),
        volatile=frozenset(draw(some_off_ring)),
        ring=frozenset(members),
        reruns=frozenset(reruns),
    )


def _ring_guards(size: int) -> st.SearchStrategy[frozenset[int]]:
    """Which positions of a ring of *size* have a fallback: none, all, or (3 or more
    members) some but not all."""
    every = frozenset(range(size))
    wholly = st.sampled_from([frozenset(), every])
    if size < 3:
        return wholly
    partly = st.sets(st.sampled_from(sorted(every)), min_size=1, max_size=size - 1)
    return wholly | partly.map(frozenset)


def ask_node(db: GraphDatabase, i: int) -> tuple[str, Any]:
    """Node *i*'s value, or its exception as ``Failure`` text: one request of a batch."""
    try:
        return "value", db.ask(i)
    except Exception as exc:
        return "raised", repr(Failure.of(exc))


async def ask_in_tasks(db: GraphDatabase, keys: list[int]) -> list[tuple[str, Any]]:
    """Each of *keys* asked from a task of its own, all at once, as :func:`ask_node` answers
    (in the order of *keys*)."""
    import anyio

    answers: list[tuple[str, Any]] = [("", None)] * len(keys)

    async def ask(position: int, i: int) -> None:
        try:
            answers[position] = "value", await db.async_ask(i)
        except Exception as exc:
            answers[position] = "raised", repr(Failure.of(exc))

    async with anyio.create_task_group() as tasks:
        for position, i in enumerate(keys):
            tasks.start_soon(ask, position, i)
    return answers


def ask_every_node(db: GraphDatabase) -> list[tuple[str, Any]]:
    """Every node's value (or exception), asked one after another from this thread."""
    return [ask_node(db, i) for i in range(len(db.graph.deps))]


_DURABILITY = st.sampled_from(list(Durability))
_LOOPS = st.sampled_from(EVENT_LOOPS)


@register_rules
class QueryRules(ConformanceMachine):
    """The query engine: generated graphs of pure queries over inputs, asked
    in concurrent batches between input changes, give the same values, the same exceptions (a
    :class:`~dualmode.CycleError` with the same ``.cycle``) and the same executions on every
    backend: each (query, key) at most once per revision, and after an input change exactly
    the same ones re-executed as on the reference; and what they give equals what a database
    built from scratch with the final inputs gives."""

    databases = Bundle("databases")

    @rule(target=databases, graph=query_graphs())
    def new_database(self, graph: QueryGraph) -> Instance | MultipleResults[Instance]:
        """``GraphDatabase(graph)`` on every backend: the same queries, nothing computed yet."""
        db = self.build(GraphDatabase, graph)
        if isinstance(db, Instance):
            db.state["inputs"] = dict.fromkeys(range(INPUTS), 0)
        return db

    @rule(db=databases, keys=st.lists(st.integers(0, 11), min_size=1, max_size=8))
    def query_batch(self, db: Instance, keys: list[int]) -> None:
        """``par_map(ask_node, keys)``: every node asked at once (serial: one after another);
        each request gets its node's value or exception, the same on every backend."""
        n = len(db.objs[0].graph.deps)
        keys = [k % n for k in keys]
        self.each(
            db,
            f"par_map(ask_node, {keys})",
            lambda obj: parallel.par_map(
                functools.partial(ask_node, obj), keys, backend=obj.backend
            ),
        )
        self._check_executions(db)

    @rule(db=databases, loop=_LOOPS, keys=st.lists(st.integers(0, 11), min_size=1, max_size=8))
    def query_batch_in_tasks(self, db: Instance, loop: str, keys: list[int]) -> None:
        """Each key awaited (``async_get``) from a task of its own, all at once, on *loop*:
        what the same batch asked from threads gives (``query_batch``), and the same
        executions."""
        n = len(db.objs[0].graph.deps)
        keys = [k % n for k in keys]
        self.each(
            db,
            f"ask_in_tasks({keys}) on {loop}",
            lambda obj: in_task(loop, ask_in_tasks, obj, keys),
        )
        self._check_executions(db)

    @rule(db=databases, key=st.integers(0, 11))
    def query_call(self, db: Instance, key: int) -> None:
        """``db.ask(key)`` from this thread: the value, or the exception, with its message."""
        key %= len(db.objs[0].graph.deps)
        self.each(db, f"ask({key})", lambda obj: obj.ask(key), errors=Failure.of)
        self._check_executions(db)

    @rule(db=databases, key=st.integers(0, 11))
    def query_peek(self, db: Instance, key: int) -> None:
        """``peek(key)``: the value (or exception) memoized and still valid (nothing it read
        changed since it was verified), else None; it computes nothing."""
        key %= len(db.objs[0].graph.deps)

        def peek(obj: GraphDatabase) -> Any:
            graph = obj.graph
            if key in graph.guarded:
                return obj.guarded.peek(key)
            return (obj.changing if key in graph.volatile else obj.node).peek(key)

        self.each(db, f"peek({key})", peek, errors=Failure.of)

    @rule(db=databases, slot=st.integers(0, INPUTS - 1), value=st.integers(0, 3), how=_DURABILITY)
    def set_input(self, db: Instance, slot: int, value: int, how: Durability) -> None:
        """``db.inp.set(slot, value, durability=how)``: a new revision; nothing executes yet."""
        self.each(
            db,
            f"inp.set({slot}, {value}, durability={how.name})",
            lambda obj: obj.inp.set(slot, value, durability=how),
        )
        db.state["inputs"][slot] = value
        self._check_executions(db)

    @rule(db=databases)
    def query_everything_against_a_fresh_database(self, db: Instance) -> None:
        """Every node, asked of the database that has lived through every input change, gives
        what a fresh database (on the reference backend) given only the final inputs gives."""
        graph = db.objs[0].graph
        fresh = GraphDatabase(graph, backend=self.backends[0])
        for slot, value in db.state["inputs"].items():
            fresh.inp[slot] = value
        expected = ask_every_node(fresh)
        for backend, obj in zip(self.backends, db.objs, strict=True):
            got = ask_every_node(obj)
            if got != expected:
                raise Divergence(
                    f"{backend.name}: {db} after input changes {db.state['inputs']} gives "
                    f"{got}, a fresh database {expected}"
                )
        self._check_executions(db)

    def _check_executions(self, db: Instance) -> None:
        """Since the last check (one revision: inputs change only between steps), each
        (query, key) executed at most once, and the same ones on every backend."""
        log = self.each(db, "executions since the last step", lambda obj: obj.take_executions())
        executed = log[0].value
        twice = sorted({e for e in executed if executed.count(e) > 1})
        if twice:
            raise Divergence(f"{db}: executed more than once in one revision: {twice}")
