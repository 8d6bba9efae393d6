"""The parallel-iteration rule family: ``par_map``, ``par_for_each``, ``join``, ``scope`` and
``broadcast`` of generated pure workloads, some of whose items fail.

Every backend must give the same values in the same order and the same
:class:`~dualmode.ParallelError` (every failure's class and message, in item order, with the
same ``.indices``), as docs/parallel.md#guarantees promises; exceptions compare through
:meth:`~dualmode.testing.Failure.of`, since their messages come from the workload. A ``scope``
block's exit waits for every task it spawned: its tasks count themselves as they end, and the
count is read at the exit, before any ``result()`` (which would wait). See
docs/architecture.md#the-conformance-kit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import rule

from .. import parallel
from .. import primitives as p
from ..backend import Backend
from ..errors import ParallelError
from .machine import (
    EVENT_LOOPS,
    ConformanceMachine,
    Instance,
    in_task,
    register_rules,
    render,
    render_call,
)
from .observation import Divergence, Failure, Observation, identity, same

__all__ = [
    "WORKLOAD_ERRORS",
    "ParallelRules",
    "affine",
    "counted",
    "fails_when",
    "modulo",
    "tally",
]

# The workloads are pure functions of small ints: module-level functions bound to generated
# constants with functools.partial, so the processes backend ships them by reference and a
# shrunk program prints as e.g. ``functools.partial(fails_when, 3, KeyError)``.


def affine(a: int, b: int, x: int) -> int:
    """``partial(affine, a, b)`` maps ``x`` to ``a*x + b``."""
    return a * x + b


def modulo(m: int, x: int) -> int:
    """``partial(modulo, m)`` maps ``x`` to ``x % m``; ``m == 0`` fails on every item with
    Python's own ZeroDivisionError."""
    return x % m


def fails_when(m: int, exc_type: type[Exception], x: int) -> int:
    """``partial(fails_when, m, exc_type)`` maps ``x`` to itself, except that it raises
    *exc_type*, with a message naming *x*, when ``x % m == 0``."""
    if x % m == 0:
        raise exc_type(f"fails_when({m}, {exc_type.__name__}): {x} % {m} == 0")
    return x


def tally(counter: p.AtomicInt, fn: Callable[[int], int], x: int) -> None:
    """``par_for_each``'s side effect: add 1 for the call, then ``fn(x)`` if it returns."""
    counter.fetch_add(1)
    counter.fetch_add(fn(x))


def counted(counter: p.AtomicInt, fn: Callable[[int], int], x: int) -> int:
    """A ``scope`` task: ``fn(x)``, adding 1 to *counter* as it ends, whether it returned or
    raised, so that the count read at the scope's exit is how many of its tasks had finished."""
    try:
        return fn(x)
    finally:
        counter.fetch_add(1)


#: The exceptions a workload raises on purpose.
WORKLOAD_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, ZeroDivisionError)

_ITEM = st.integers(-20, 20)
# Hypothesis favours short lists: the second branch makes half of them long enough to be cut
# into several chunks of several items
_ITEMS = st.lists(_ITEM, max_size=40) | st.lists(_ITEM, min_size=10, max_size=40)
_WORKLOAD_ERROR = st.sampled_from(WORKLOAD_ERRORS)
_LOOPS = st.sampled_from(EVENT_LOOPS)
_CHUNKSIZE = st.none() | st.integers(1, 10)
# one-argument functions: par_map(fn, items)
_FNS: st.SearchStrategy[functools.partial[int]] = st.one_of(
    st.builds(functools.partial, st.just(affine), st.integers(-3, 3), st.integers(-5, 5)),
    st.builds(functools.partial, st.just(modulo), st.integers(0, 5)),
    st.builds(functools.partial, st.just(fails_when), st.integers(1, 5), _WORKLOAD_ERROR),
)
# zero-argument functions (join, broadcast): one of the above bound to an item as well
_THUNKS: st.SearchStrategy[functools.partial[int]] = st.builds(functools.partial, _FNS, _ITEM)


def _result_of(handle: parallel.TaskHandle[Any]) -> Any:
    """A scope task's ``result()``: its value, or the :class:`Failure` it raised."""
    try:
        return handle.result()
    except Exception as exc:
        return Failure.of(exc)


def _run_scope(
    backend: Backend,
    counter: p.AtomicInt,
    fns: Sequence[Callable[[int], Any]],
    tasks: Sequence[tuple[int, int]],
    body_error: type[Exception] | None,
) -> tuple[Observation, Observation, Observation]:
    """``with scope(): spawn(work[i], x)`` for every task ``(i, x)``, where ``work[i]`` is
    ``partial(counted, counter, fns[i])``, then raise *body_error* if given.

    Returns how the ``with`` block exited; *counter* read at once, before any ``result()`` (the
    number of tasks that had finished at the exit); and every handle's result (a value or a
    :class:`Failure`), in spawn order.
    """
    work = [functools.partial(counted, counter, fn) for fn in fns]
    handles: list[parallel.TaskHandle[Any]] = []

    def run() -> None:
        with parallel.scope(backend=backend) as s:
            for i, x in tasks:
                handles.append(s.spawn(work[i], x))
            if body_error is not None:
                raise body_error("raised by the scope's body")

    exit_observation = Observation.of(run)
    finished = Observation.of(counter.load)
    return exit_observation, finished, Observation(value=tuple(_result_of(h) for h in handles))


def _distinct(values: Any) -> Any:
    """Normalizer for ``broadcast`` of a pure function: its distinct results, as a list."""
    if not isinstance(values, list):
        return values
    seen: list[Any] = []
    for value in values:
        if not any(same(value, s) for s in seen):
            seen.append(value)
    return sorted(seen, key=repr)


def _distinct_failures(exc: Exception) -> Failure:
    """Errors normalizer for ``broadcast``: a ParallelError's distinct failures (one per worker
    is checked separately), without indices."""
    failure = Failure.of(exc)
    if failure.indices is None:
        return failure
    distinct: list[Failure] = []
    for error in failure.errors:
        if error not in distinct:
            distinct.append(error)
    return Failure(failure.kind, errors=tuple(distinct), indices=())


@register_rules
class ParallelRules(ConformanceMachine):
    """Parallel iteration: the same workload, values and failures, gives the same
    values in the same order and the same :class:`~dualmode.ParallelError` (every failure's
    class and message, in item order, with the same ``.indices``) on every backend.

    Each rule is one call of ``dualmode.parallel`` on every backend with the same generated
    workload (:func:`affine`, :func:`modulo`, :func:`fails_when`; lists of up to 40 items)
    and compares exceptions with :meth:`Failure.of`. The rules keep no state:
    a program is a sequence of independent calls.
    """

    @rule(fn=_FNS, items=_ITEMS, chunksize=_CHUNKSIZE)
    def par_map(self, fn: Callable[[int], int], items: list[int], chunksize: int | None) -> None:
        """``par_map(fn, items, chunksize=c)``: ``[fn(x) for x in items]`` in item order,
        whatever the chunking; if any item fails, every item still runs and one ParallelError
        holds every failure in item order, ``.indices`` their positions."""
        self.each_backend(
            render_call("par_map", (fn, items), {"chunksize": chunksize}),
            lambda b: parallel.par_map(fn, items, chunksize=chunksize, backend=b),
            errors=Failure.of,
        )

    @rule(fn=_FNS, items=_ITEMS, chunksize=_CHUNKSIZE)
    def par_for_each(
        self, fn: Callable[[int], int], items: list[int], chunksize: int | None
    ) -> None:
        """``par_for_each(fn, items)``: None, or par_map's ParallelError; every item runs once,
        failures too (an AtomicInt of each backend counts the calls and sums the values)."""
        counter = self.build(p.AtomicInt, 0)
        assert isinstance(counter, Instance)  # AtomicInt(0) is built on every backend
        observations = [
            Observation.of(
                lambda b, c: parallel.par_for_each(
                    functools.partial(tally, c, fn), items, chunksize=chunksize, backend=b
                ),
                backend,
                obj,
            )
            for backend, obj in zip(self.backends, counter.objs, strict=True)
        ]
        work = f"partial(tally, {counter}, {render(fn)})"
        what = f"par_for_each({work}, {items!r}, chunksize={chunksize!r})"
        self.compare(what, observations, errors=Failure.of)
        self.call(counter, "load")

    @rule(fn=_FNS, items=_ITEMS, chunksize=_CHUNKSIZE, loop=_LOOPS)
    def async_par_map(
        self, fn: Callable[[int], int], items: list[int], chunksize: int | None, loop: str
    ) -> None:
        """``await async_par_map(fn, items, chunksize=c)`` from a task on *loop*: what
        ``par_map`` gives, values and ParallelError alike."""
        self.each_backend(
            f"{render_call('async_par_map', (fn, items), {'chunksize': chunksize})} on {loop}",
            lambda b: in_task(
                loop,
                functools.partial(parallel.async_par_map, chunksize=chunksize, backend=b),
                fn,
                items,
            ),
            errors=Failure.of,
        )

    @rule(fa=_THUNKS, fb=_THUNKS, loop=_LOOPS)
    def async_join(self, fa: Callable[[], int], fb: Callable[[], int], loop: str) -> None:
        """``await async_join(fa, fb)`` from a task on *loop*: what ``join`` gives."""
        self.each_backend(
            f"{render_call('async_join', (fa, fb), {})} on {loop}",
            lambda b: in_task(loop, functools.partial(parallel.async_join, backend=b), fa, fb),
            errors=Failure.of,
        )

    @rule(fn=_FNS, item=_ITEM, loop=_LOOPS)
    def run_in_worker(self, fn: Callable[[int], int], item: int, loop: str) -> None:
        """``await run_in_worker(fn, x)`` from a task on *loop*: ``fn(x)``, or its exception
        as itself (no ParallelError: one call)."""
        self.each_backend(
            f"{render_call('run_in_worker', (fn, item), {})} on {loop}",
            lambda b: in_task(loop, functools.partial(parallel.run_in_worker, backend=b), fn, item),
            errors=Failure.of,
        )

    @rule(fa=_THUNKS, fb=_THUNKS)
    def join(self, fa: Callable[[], int], fb: Callable[[], int]) -> None:
        """``join(fa, fb)``: ``(fa(), fb())``; if either fails, both still ran and one
        ParallelError holds the failures, fa's first."""
        self.each_backend(
            render_call("join", (fa, fb), {}),
            lambda b: parallel.join(fa, fb, backend=b),
            errors=Failure.of,
        )

    @rule(
        fns=st.lists(_FNS, min_size=1, max_size=3),
        tasks=st.lists(st.tuples(st.integers(0, 2), _ITEM), max_size=8),
        body_error=st.none() | _WORKLOAD_ERROR,
    )
    def scope(
        self,
        fns: list[Callable[[int], int]],
        tasks: list[tuple[int, int]],
        body_error: type[Exception] | None,
    ) -> None:
        """``with scope() as s: s.spawn(fn, x)...``, each task ``(i, x)`` spawning ``fns[i]``
        (modulo their number): a few functions over several items, as programs spawn them, so
        that the same call may come twice.

        When the block exits every task has finished: each counts itself on an AtomicInt of
        the backend as it ends (:func:`counted`), and the count is read at the exit, before any
        ``result()``. Each handle's ``result()`` is its task's value or exception; at exit one
        ParallelError holds the failures in spawn order, the body's own exception first; a
        body that fails alone raises its exception as itself."""
        counter = self.build(p.AtomicInt, 0)
        assert isinstance(counter, Instance)  # AtomicInt(0) is built on every backend
        tasks = [(i % len(fns), x) for i, x in tasks]
        steps = [render_call("spawn", (fns[i], x), {}) for i, x in tasks]
        if body_error is not None:
            steps.append(f"raise {body_error.__name__}")
        what = f"with scope(): {'; '.join(steps) or 'pass'}"
        runs = [
            _run_scope(backend, obj, fns, tasks, body_error)
            for backend, obj in zip(self.backends, counter.objs, strict=True)
        ]
        self.compare(
            f"{what} (how many of its {len(tasks)} tasks had finished at its exit, "
            f"counted on {counter})",
            [finished for _, finished, _ in runs],
        )
        self.compare(f"{what} (its exit)", [exited for exited, _, _ in runs], errors=Failure.of)
        self.compare(f"{what} (each handle's result())", [results for _, _, results in runs])

    @rule(fn=_THUNKS)
    def broadcast(self, fn: Callable[[], int]) -> None:
        """``broadcast(fn)``: ``fn()`` once on every worker (serial has one, threads and
        processes as many as they were built with), so one result per worker, or one
        ParallelError with one failure per worker at indices ``0..workers-1``; across
        backends, the distinct results (or failures) are the same."""
        what = render_call("broadcast", (fn,), {})
        observations = [
            Observation.of(lambda b: parallel.broadcast(fn, backend=b), backend)
            for backend in self.backends
        ]
        for backend, observation in zip(self.backends, observations, strict=True):
            _check_one_per_worker(backend, what, observation)
        self.compare(
            f"{what}, distinct results", observations, _distinct, errors=_distinct_failures
        )


def _check_one_per_worker(backend: Backend, what: str, observation: Observation) -> None:
    """``broadcast`` ran once on each of *backend*'s workers: as many results (or failures,
    at indices ``0..workers-1``) as workers.

    Raises:
        Divergence: naming the backend, what it gave and its worker count.
    """
    if isinstance(observation.error, ParallelError):
        count, indices = len(observation.error.exceptions), list(observation.error.indices)
    elif observation.ok and isinstance(observation.value, list):
        count, indices = len(observation.value), list(range(len(observation.value)))
    else:
        return  # another exception, or not a list: the comparison across backends reports it
    if count != backend.workers or indices != list(range(backend.workers)):
        raise Divergence(
            f"{backend.name} (workers={backend.workers}): {what} "
            f"{observation.describe(identity, Failure.of)}: {count} results, expected one per "
            "worker"
        )
