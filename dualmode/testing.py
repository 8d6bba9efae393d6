"""The conformance kit: one random program of primitive operations, run on several backends.

The equivalence contract (design section 4) says a program gives the same observable results on
every backend. :class:`PrimitiveConformance` checks it for the 15 primitives the way Hypothesis
checks its own stateful code: a :class:`~hypothesis.stateful.RuleBasedStateMachine` draws a
sequence of operations (build a Lock, ``acquire(blocking=False)`` it, ``release`` it twice,
build a Queue, ``put``...) and applies each step to one instance per backend. After every step
each backend must have returned an equal value (of the same type), or raised an exception of
the same class (messages may differ). The first backend is the reference, normally
``"serial"``; any difference raises :class:`Divergence`, which Hypothesis then shrinks to a
minimal program and prints.

Only operations that give the same result everywhere *from one thread* are used: non-blocking
calls, 1 ms timeouts (which fail at once on serial and after 1 ms on a parallel backend), and
blocking calls only where the machine knows they cannot wait (a free Lock, a non-empty Queue).
A blocking call that could wait is never made: serial raises BorrowError there, where a
parallel backend would hang.

For backend authors::

    python -c "from dualmode.testing import run_conformance; run_conformance('mybackend')"

:func:`run_conformance` runs each primitive's rule set as a machine of its own (programs that
stay on one primitive reach deep states quickly), then all of them in one machine. In a pytest
suite, ``TestMine = conformance_machine(["serial", "mybackend"]).TestCase`` runs the latter.

Every rule is named after the operation it checks (``lock_acquire``, ``queue_get``...), and its
docstring states the contract. More rule sets plug in as mixins: subclass
:class:`ConformanceMachine`, write rules with its helpers (``build``, ``call``, ``each``,
``each_backend``), and decorate the class with :func:`register_rules`; the default machines
then include it. :class:`ParallelRules` is one: ``par_map``, ``par_for_each``, ``join``,
``scope`` and ``broadcast`` of generated pure workloads, some of whose items fail; there the
exceptions' messages come from the workload, so a :class:`~dualmode.ParallelError` must match
in full (:class:`Failure`: every failure's class and message, and ``.indices``).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import hypothesis
import hypothesis.strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    multiple,
    rule,
    run_state_machine_as_test,
)

from . import parallel
from . import primitives as p
from .backend import Backend
from .config import BackendSpec, load_backend, resolve_backend
from .errors import ParallelError
from .query import Database, Durability, input, query

__all__ = [
    "TINY",
    "AtomicIntRules",
    "BarrierRules",
    "ConditionRules",
    "ConformanceMachine",
    "Divergence",
    "EventRules",
    "Failure",
    "FreezeLockRules",
    "Instance",
    "LockRules",
    "MutexRules",
    "OnceCellRules",
    "Outcome",
    "PRIMITIVE_RULES",
    "ParallelRules",
    "GraphDatabase",
    "QueryGraph",
    "QueryRules",
    "PrimitiveConformance",
    "QueueRules",
    "RLockRules",
    "RULE_MIXINS",
    "RwLockRules",
    "SemaphoreRules",
    "ShardedDictRules",
    "WorkerLocalRules",
    "conformance_machine",
    "default_rules",
    "register_rules",
    "run_conformance",
]

#: The timeout of every timed call: it fails at once on serial and after 1 ms in parallel.
TINY = 0.001

M = TypeVar("M", bound="type[ConformanceMachine]")


class Divergence(AssertionError):
    """Two backends gave different observable results for the same step."""


# -- comparing outcomes -------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    """Equal, and of the same type all the way down: ``1``, ``1.0`` and ``True`` differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        if len(a) != len(b):
            return False
        for key, value in a.items():
            # dicts keep the first key inserted among equal ones (1 vs True): compare that too
            other = next((k for k in b if k == key), p.MISSING)
            if other is p.MISSING or not _same(key, other) or not _same(value, b[other]):
                return False
        return True
    return a == b


def _identity(value: Any) -> Any:
    return value


def _opaque(value: Any) -> str | None:
    """Normalizer for per-backend objects (a new primitive, a guard): only None-ness compares."""
    return None if value is None else "<object>"


def _as_dict(items: Any) -> tuple[int, dict[Any, Any]]:
    """Normalizer for ``ShardedDict.items()``: order is unspecified, duplicates are a bug."""
    pairs = list(items)
    return len(pairs), dict(pairs)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class Outcome:
    """What one backend's call did: returned :attr:`value`, or raised :attr:`error`."""

    value: Any = None
    error: Exception | None = None

    @classmethod
    def of(cls, fn: Callable[..., Any], *args: Any) -> Outcome:
        """Call ``fn(*args)`` and record its result or its exception."""
        try:
            return cls(value=fn(*args))
        except Exception as exc:  # any exception is an observable result to compare
            return cls(error=exc)

    @property
    def ok(self) -> bool:
        return self.error is None

    def matches(
        self,
        other: Outcome,
        normalize: Callable[[Any], Any],
        errors: Callable[[Exception], Any] | None = None,
    ) -> bool:
        """Both returned and the normalized values are the same, or both raised an exception of
        the same class (and, given *errors*, the same ``errors(exc)``: e.g. :meth:`Failure.of`
        where messages come from user code and must match too)."""
        if self.error is None or other.error is None:
            return self.error is other.error and _same(
                normalize(self.value), normalize(other.value)
            )
        if type(self.error) is not type(other.error):
            return False
        return errors is None or _same(errors(self.error), errors(other.error))

    def describe(
        self, normalize: Callable[[Any], Any], errors: Callable[[Exception], Any] | None = None
    ) -> str:
        if self.error is not None:
            if errors is not None:
                return f"raised {errors(self.error)!r}"
            return f"raised {_qualname(type(self.error))}({self.error})"
        return f"returned {normalize(self.value)!r}"


# -- the machine ------------------------------------------------------------------------------


@dataclass(eq=False)
class Instance:
    """One logical object of the program: its twin on each backend, plus what the machine knows.

    ``objs[i]`` lives on ``machine.backends[i]``; ``kind`` is the public class it was built as
    (None for a guard). ``state`` is the machine's model of the object (a semaphore's value, a
    queue's unfinished tasks), kept only to decide which calls are safe to make; it is updated
    from results that every backend agreed on.
    """

    label: str
    objs: tuple[Any, ...]
    state: dict[str, Any] = field(default_factory=dict)
    kind: type | None = None

    def __repr__(self) -> str:
        return self.label


def _render_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [_render(a) for a in args] + [f"{k}={_render(v)}" for k, v in kwargs.items()]
    return f"{method}({', '.join(parts)})"


def _render(value: Any) -> str:
    if isinstance(value, functools.partial):
        if value.func is _const:
            return f"<fn returning {value.args[0]!r}>"
        return f"partial({', '.join([value.func.__name__, *map(_render, value.args)])})"
    if isinstance(value, type):
        return value.__name__
    return repr(value)


class ConformanceMachine(RuleBasedStateMachine):
    """Base of every conformance machine: the backends under comparison and the helpers.

    Subclass it to write a rule set (a mixin): every rule runs one operation on every backend
    through :meth:`call`, :meth:`each` or :meth:`build`, which raise :class:`Divergence` as soon
    as a backend's outcome differs from the reference's (``backends[0]``). Build a runnable
    machine with :func:`conformance_machine`, which sets :attr:`backend_specs`.
    """

    #: Backend names or instances; the first is the reference. Set by conformance_machine().
    backend_specs: ClassVar[tuple[BackendSpec, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        if not self.backend_specs:
            raise TypeError(
                f"{type(self).__name__} has no backends: build a runnable machine with "
                "dualmode.testing.conformance_machine(['serial', 'mybackend'])"
            )
        self.backends: tuple[Backend, ...] = tuple(resolve_backend(s) for s in self.backend_specs)
        self._labels = itertools.count(1)

    def compare(
        self,
        what: str,
        outcomes: Sequence[Outcome],
        normalize: Callable[[Any], Any] = _identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> Outcome:
        """Check that every backend's outcome of step *what* matches the reference's; return it.

        Values compare after *normalize*; exceptions by class, and also by ``errors(exc)`` if
        *errors* is given (see :meth:`Outcome.matches`).

        Raises:
            Divergence: naming the step and every backend's outcome.
        """
        reference = outcomes[0]
        if all(reference.matches(o, normalize, errors) for o in outcomes[1:]):
            return reference
        lines = [
            f"  {b.name}: {o.describe(normalize, errors)}"
            for b, o in zip(self.backends, outcomes, strict=True)
        ]
        raise Divergence(f"backends disagree on {what}:\n" + "\n".join(lines))

    def each(
        self,
        inst: Instance,
        what: str,
        op: Callable[[Any], Any],
        normalize: Callable[[Any], Any] = _identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> list[Outcome]:
        """Run ``op(obj)`` on *inst*'s twin on every backend, compare, return every outcome.

        Use it when the per-backend results are needed afterwards (guards), or the operation
        is not a plain method call (a property).
        """
        outcomes = [Outcome.of(op, obj) for obj in inst.objs]
        self.compare(f"{inst}.{what}", outcomes, normalize, errors=errors)
        return outcomes

    def each_backend(
        self,
        what: str,
        op: Callable[[Backend], Any],
        normalize: Callable[[Any], Any] = _identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> list[Outcome]:
        """Run ``op(backend)`` for every backend, compare, return every outcome.

        The helper for operations that belong to no primitive, e.g. a rule set for parallel
        iteration: ``self.each_backend("par_map", lambda b: dm.par_map(f, xs, backend=b))``.
        """
        outcomes = [Outcome.of(op, backend) for backend in self.backends]
        self.compare(what, outcomes, normalize, errors=errors)
        return outcomes

    def call(self, inst: Instance, method: str, *args: Any, **kwargs: Any) -> Outcome:
        """``inst.method(*args, **kwargs)`` on every backend; the (agreed) reference outcome."""
        outcomes = self.each(
            inst,
            _render_call(method, args, kwargs),
            lambda obj: getattr(obj, method)(*args, **kwargs),
        )
        return outcomes[0]

    def build(
        self, cls: type[Any], *args: Any, **kwargs: Any
    ) -> Instance | MultipleResults[Instance]:
        """``cls(*args, backend=b, **kwargs)`` for every backend ``b``: a new :class:`Instance`.

        An :class:`Instance` among *args* stands for its twin on the same backend (a Condition's
        lock). Also checks the construction contract: each object is an instance of the public
        class and its ``.backend`` is the backend that built it. If every backend raised the same
        exception, nothing is added to the bundle.
        """

        def construct(i: int, backend: Backend) -> Any:
            real = [a.objs[i] if isinstance(a, Instance) else a for a in args]
            return cls(*real, backend=backend, **kwargs)

        what = _render_call(cls.__name__, args, kwargs)
        outcomes = [Outcome.of(construct, i, b) for i, b in enumerate(self.backends)]
        if not self.compare(what, outcomes, _opaque).ok:
            return multiple()
        for backend, outcome in zip(self.backends, outcomes, strict=True):
            obj = outcome.value
            if not isinstance(obj, cls):
                raise Divergence(
                    f"{backend.name}: {what} built {type(obj).__qualname__}, which is not a "
                    f"subclass of dualmode.{cls.__name__}"
                )
            if obj.backend is not backend:
                raise Divergence(f"{backend.name}: {what}.backend is {obj.backend!r}")
        objs = tuple(o.value for o in outcomes)
        return Instance(f"{cls.__name__}#{next(self._labels)}", objs, kind=cls)

    def read(self, inst: Instance, attr: str) -> Any:
        """The property ``inst.attr`` on every backend; the (agreed) reference value."""
        return self.each(inst, attr, lambda obj: getattr(obj, attr))[0].value

    def twins(self, label: str, outcomes: Sequence[Outcome], **state: Any) -> Instance:
        """An :class:`Instance` of per-backend results of one agreed step (guards)."""
        return Instance(
            f"{label}#{next(self._labels)}", tuple(o.value for o in outcomes), dict(state)
        )

    def acquire(
        self, inst: Instance, how: str, *, may_block: bool, method: str = "acquire"
    ) -> bool:
        """One ``threading``-style acquire variant on every backend; True if it succeeded.

        *how*: ``nonblocking`` (``blocking=False``), ``timeout`` (1 ms), ``blocking`` (only if
        *may_block*, i.e. the machine knows it succeeds at once; else the 1 ms timeout),
        ``bad-args`` (``blocking=False`` with a timeout: ValueError, as in ``threading``) or
        ``negative-timeout`` (-2: ValueError for a lock; a semaphore treats it as no wait).
        """
        if how == "blocking" and not may_block:
            how = "timeout"
        return self.call(inst, method, **_ACQUIRE_ARGS[how]).value is True


#: Rule mixins added to every machine that :func:`conformance_machine` builds by default.
RULE_MIXINS: list[type[ConformanceMachine]] = []


def register_rules(mixin: M) -> M:
    """Class decorator: add a :class:`ConformanceMachine` subclass to :data:`RULE_MIXINS`."""
    if not (isinstance(mixin, type) and issubclass(mixin, ConformanceMachine)):
        raise TypeError(f"{mixin!r} is not a ConformanceMachine subclass")
    if mixin not in RULE_MIXINS:
        RULE_MIXINS.append(mixin)
    return mixin


# -- strategies -------------------------------------------------------------------------------

# The variants of a timed call; "bad-args" must raise ValueError, as in threading and queue.
_ACQUIRE_ARGS: dict[str, dict[str, Any]] = {
    "nonblocking": {"blocking": False},
    "timeout": {"timeout": TINY},
    "blocking": {},
    "bad-args": {"blocking": False, "timeout": 1.0},
    "negative-timeout": {"timeout": -2},  # ValueError for locks; a semaphore treats it as 0
}
_QUEUE_ARGS: dict[str, dict[str, Any]] = {
    "nowait": {"block": False},
    "timeout": {"timeout": TINY},
    "block": {},
    "bad-args": {"timeout": -1},
}
_ACQUIRE = st.sampled_from(list(_ACQUIRE_ARGS))
_QUEUE_MODE = st.sampled_from(list(_QUEUE_ARGS))
_INTS = st.integers(-8, 8) | st.sampled_from([2**31, 2**63 - 1, -(2**63), 2**64])
# picklable (the processes backend ships them), hashable, no NaN; 1, 1.0 and True are one key
_KEYS = st.sampled_from([0, 1, 2, 1.0, True, "a", "b", None, ("t", 1)])
_VALUES = st.integers(-3, 3) | st.sampled_from(["x", "", None, ("t", 1), 1.5, False])


def _const(value: Any) -> Any:
    return value


def _returning(value: Any) -> functools.partial[Any]:
    """A picklable zero-argument callable returning *value* (factories, predicates)."""
    return functools.partial(_const, value)


class _Planned(Exception):
    """Raised on purpose by a OnceCell initialiser or a Barrier action (picklable)."""


def _fail() -> None:
    raise _Planned("barrier action")


# A Barrier's action: none, one that returns, one that raises (it runs in the coordinator on
# the processes backend, so it must pickle).
_BARRIER_ACTIONS: dict[str, Callable[[], object] | None] = {
    "none": None,
    "returns": _returning(1),
    "raises": _fail,
}


# -- the primitives' rules, one mixin per primitive -------------------------------------------


class LockRules(ConformanceMachine):
    """``dm.Lock``: a non-reentrant mutual-exclusion lock."""

    locks = Bundle("locks")

    @rule(target=locks)
    def lock_new(self) -> Instance | MultipleResults[Instance]:
        """``Lock()``: a free lock."""
        return self.build(p.Lock)

    @rule(lock=locks, how=_ACQUIRE)
    def lock_acquire(self, lock: Instance, how: str) -> None:
        """``acquire``: True if free; False if held (non-blocking, or after the timeout)."""
        self.acquire(lock, how, may_block=not self.call(lock, "locked").value)

    @rule(lock=locks)
    def lock_release(self, lock: Instance) -> None:
        """``release``: None if held; RuntimeError if not."""
        self.call(lock, "release")

    @rule(lock=locks)
    def lock_locked(self, lock: Instance) -> None:
        """``locked``: whether it is held."""
        self.call(lock, "locked")


class RLockRules(ConformanceMachine):
    """``dm.RLock``: the holder may acquire again; one release per acquire."""

    rlocks = Bundle("rlocks")

    @rule(target=rlocks)
    def rlock_new(self) -> Instance | MultipleResults[Instance]:
        """``RLock()``: a free reentrant lock."""
        return self.build(p.RLock)

    @rule(rlock=rlocks, how=_ACQUIRE)
    def rlock_acquire(self, rlock: Instance, how: str) -> None:
        """``acquire``: always True from the one thread that holds or may take it."""
        self.acquire(rlock, how, may_block=True)

    @rule(rlock=rlocks)
    def rlock_release(self, rlock: Instance) -> None:
        """``release``: None while held; RuntimeError once every acquire was released."""
        self.call(rlock, "release")


class ConditionRules(LockRules, RLockRules):
    """``dm.Condition``: wait/notify over its lock (a new RLock, or a Lock/RLock passed in).

    Includes the Lock and RLock rules: a Condition built over a lock shares its state.
    """

    conditions = Bundle("conditions")

    def _new(self, lock: Instance | None) -> Instance | MultipleResults[Instance]:
        built = self.build(p.Condition) if lock is None else self.build(p.Condition, lock)
        if isinstance(built, Instance):
            # a Condition over a plain Lock is as free as that lock; otherwise it is reentrant
            built.state["lock"] = lock if lock is not None and lock.kind is p.Lock else None
        return built

    @rule(target=conditions)
    def condition_new(self) -> Instance | MultipleResults[Instance]:
        """``Condition()``: over a new RLock of the same backend."""
        return self._new(None)

    @rule(target=conditions, lock=LockRules.locks)
    def condition_new_with_lock(self, lock: Instance) -> Instance | MultipleResults[Instance]:
        """``Condition(lock)``: shares the Lock's state (acquiring one holds the other)."""
        return self._new(lock)

    @rule(target=conditions, rlock=RLockRules.rlocks)
    def condition_new_with_rlock(self, rlock: Instance) -> Instance | MultipleResults[Instance]:
        """``Condition(rlock)``: shares the RLock's state."""
        return self._new(rlock)

    @rule(cond=conditions, how=_ACQUIRE)
    def condition_acquire(self, cond: Instance, how: str) -> None:
        """``acquire``: acquires the underlying lock, with that lock's answer."""
        lock = cond.state["lock"]
        free = lock is None or not self.call(lock, "locked").value
        self.acquire(cond, how, may_block=free)

    @rule(cond=conditions)
    def condition_release(self, cond: Instance) -> None:
        """``release``: releases the underlying lock; RuntimeError if not held."""
        self.call(cond, "release")

    @rule(cond=conditions, timeout=st.sampled_from([TINY, 0, -1]))
    def condition_wait(self, cond: Instance, timeout: float) -> None:
        """``wait(timeout)``: False when nobody notifies (a timeout <= 0 does not wait);
        RuntimeError without the lock."""
        self.call(cond, "wait", timeout=timeout)

    @rule(cond=conditions, result=_VALUES)
    def condition_wait_for(self, cond: Instance, result: Any) -> None:
        """``wait_for(predicate, timeout)``: the predicate's last value. A true predicate
        returns at once (as in ``threading``); a false one waits: RuntimeError without the lock."""
        self.call(cond, "wait_for", _returning(result), timeout=TINY)

    @rule(cond=conditions, n=st.integers(0, 2))
    def condition_notify(self, cond: Instance, n: int) -> None:
        """``notify(n)``: None with the lock held (nobody waits); RuntimeError without it."""
        self.call(cond, "notify", n)

    @rule(cond=conditions)
    def condition_notify_all(self, cond: Instance) -> None:
        """``notify_all``: as ``notify``."""
        self.call(cond, "notify_all")


class SemaphoreRules(ConformanceMachine):
    """``dm.Semaphore`` and ``dm.BoundedSemaphore``: a counter of free units."""

    semaphores = Bundle("semaphores")

    @rule(target=semaphores, bounded=st.booleans(), value=st.integers(-1, 3))
    def semaphore_new(self, bounded: bool, value: int) -> Instance | MultipleResults[Instance]:
        """``Semaphore(value)`` / ``BoundedSemaphore(value)``; ValueError below 0."""
        built = self.build(p.BoundedSemaphore if bounded else p.Semaphore, value)
        if isinstance(built, Instance):
            built.state["value"] = value
        return built

    @rule(sem=semaphores, how=_ACQUIRE)
    def semaphore_acquire(self, sem: Instance, how: str) -> None:
        """``acquire``: True and one unit fewer if any is free, else False."""
        if self.acquire(sem, how, may_block=sem.state["value"] > 0):
            sem.state["value"] -= 1

    @rule(sem=semaphores, n=st.integers(1, 2))
    def semaphore_release(self, sem: Instance, n: int) -> None:
        """``release(n)``: n more units; a BoundedSemaphore raises ValueError (and changes
        nothing) past its initial value."""
        if self.call(sem, "release", n).ok:
            sem.state["value"] += n


class EventRules(ConformanceMachine):
    """``dm.Event``: a flag."""

    events = Bundle("events")

    @rule(target=events)
    def event_new(self) -> Instance | MultipleResults[Instance]:
        """``Event()``: unset."""
        return self.build(p.Event)

    @rule(event=events)
    def event_set(self, event: Instance) -> None:
        """``set``: None."""
        self.call(event, "set")

    @rule(event=events)
    def event_clear(self, event: Instance) -> None:
        """``clear``: None."""
        self.call(event, "clear")

    @rule(event=events)
    def event_is_set(self, event: Instance) -> None:
        """``is_set``: the flag."""
        self.call(event, "is_set")

    @rule(event=events, timeout=st.sampled_from([None, 0, TINY, -1]))
    def event_wait(self, event: Instance, timeout: float | None) -> None:
        """``wait(timeout)``: True if set; False after the timeout (at once if <= 0).
        ``wait()`` with no timeout only when set (unset, serial raises BorrowError where a
        parallel backend would wait forever)."""
        if timeout is None and not self.call(event, "is_set").value:
            timeout = TINY
        self.call(event, "wait", timeout=timeout)


class BarrierRules(ConformanceMachine):
    """``dm.Barrier``: from one thread only ``parties=1`` passes; more parties time out."""

    barriers = Bundle("barriers")

    @rule(
        target=barriers,
        parties=st.integers(0, 3),
        action=st.sampled_from(list(_BARRIER_ACTIONS)),
        timeout=st.sampled_from([None, TINY]),
    )
    def barrier_new(
        self, parties: int, action: str, timeout: float | None
    ) -> Instance | MultipleResults[Instance]:
        """``Barrier(parties, action, timeout)``: ValueError for 0 parties; the timeout is the
        default for ``wait``; the action runs when the barrier trips."""
        built = self.build(p.Barrier, parties, action=_BARRIER_ACTIONS[action], timeout=timeout)
        if isinstance(built, Instance):
            built.state.update(parties=parties, timeout=timeout)
        return built

    @rule(barrier=barriers, timeout=st.sampled_from([None, TINY, -1]))
    def barrier_wait(self, barrier: Instance, timeout: float | None) -> None:
        """``wait(timeout)``: 0 with one party, after running the action (if the action
        raises, that exception propagates and the barrier breaks); with more parties the wait
        times out, breaks the barrier and raises BrokenBarrierError; a broken barrier raises
        it at once. No timeout at all only where it cannot wait (one party, or broken)."""
        state = barrier.state
        if (
            timeout is None
            and state["timeout"] is None
            and state["parties"] > 1
            and not self.read(barrier, "broken")
        ):
            timeout = TINY
        self.call(barrier, "wait", timeout=timeout)

    @rule(barrier=barriers)
    def barrier_reset(self, barrier: Instance) -> None:
        """``reset``: None; the barrier is no longer broken."""
        self.call(barrier, "reset")

    @rule(barrier=barriers)
    def barrier_abort(self, barrier: Instance) -> None:
        """``abort``: None; the barrier is broken."""
        self.call(barrier, "abort")

    @rule(barrier=barriers)
    def barrier_properties(self, barrier: Instance) -> None:
        """``parties``, ``n_waiting`` (0: nobody else waits) and ``broken``."""
        self.each(
            barrier, "(parties, n_waiting, broken)", lambda b: (b.parties, b.n_waiting, b.broken)
        )


class RwLockRules(ConformanceMachine):
    """``dm.RwLock``: shared reads, exclusive writes (non-blocking and timed acquires)."""

    rwlocks = Bundle("rwlocks")

    @rule(target=rwlocks)
    def rwlock_new(self) -> Instance | MultipleResults[Instance]:
        """``RwLock()``: free."""
        built = self.build(p.RwLock)
        if isinstance(built, Instance):
            built.state.update(reads=0, writes=0)
        return built

    @rule(rw=rwlocks, how=_ACQUIRE)
    def rwlock_acquire_read(self, rw: Instance, how: str) -> None:
        """``acquire_read``: True unless a write is held (then False); reads nest."""
        if self.acquire(rw, how, may_block=rw.state["writes"] == 0, method="acquire_read"):
            rw.state["reads"] += 1

    @rule(rw=rwlocks)
    def rwlock_release_read(self, rw: Instance) -> None:
        """``release_read``: None if a read is held; RuntimeError if not."""
        if self.call(rw, "release_read").ok:
            rw.state["reads"] -= 1

    @rule(rw=rwlocks, how=_ACQUIRE)
    def rwlock_acquire_write(self, rw: Instance, how: str) -> None:
        """``acquire_write``: True only if nothing is held (a read or a write); else False."""
        free = rw.state["reads"] == 0 and rw.state["writes"] == 0
        if self.acquire(rw, how, may_block=free, method="acquire_write"):
            rw.state["writes"] += 1

    @rule(rw=rwlocks)
    def rwlock_release_write(self, rw: Instance) -> None:
        """``release_write``: None if the write is held; RuntimeError if not."""
        if self.call(rw, "release_write").ok:
            rw.state["writes"] -= 1


class MutexRules(ConformanceMachine):
    """``dm.Mutex``: a value behind a lock, reached through a guard."""

    mutexes = Bundle("mutexes")
    mutex_guards = Bundle("mutex_guards")

    @rule(target=mutexes, value=_VALUES)
    def mutex_new(self, value: Any) -> Instance | MultipleResults[Instance]:
        """``Mutex(value)``: unlocked."""
        built = self.build(p.Mutex, value)
        if isinstance(built, Instance):
            built.state["locked"] = False
        return built

    def _guard(self, mutex: Instance, method: str) -> Instance | MultipleResults[Instance]:
        outcomes = self.each(mutex, f"{method}()", lambda m: getattr(m, method)(), _opaque)
        if outcomes[0].value is None:
            return multiple()
        mutex.state["locked"] = True
        return self.twins("MutexGuard", outcomes, mutex=mutex)

    @rule(target=mutex_guards, mutex=mutexes)
    def mutex_lock(self, mutex: Instance) -> Instance | MultipleResults[Instance]:
        """``lock()``: a guard, when unlocked. (While a guard lives it is not called: serial
        raises BorrowError where a parallel backend would wait forever.)"""
        if mutex.state["locked"]:
            return multiple()
        return self._guard(mutex, "lock")

    @rule(target=mutex_guards, mutex=mutexes)
    def mutex_try_lock(self, mutex: Instance) -> Instance | MultipleResults[Instance]:
        """``try_lock()``: a guard when unlocked, None while a guard lives."""
        return self._guard(mutex, "try_lock")

    @rule(guard=mutex_guards)
    def mutex_guard_get(self, guard: Instance) -> None:
        """``guard.value``: the value; RuntimeError once the guard is released."""
        self.read(guard, "value")

    @rule(guard=mutex_guards, value=_VALUES)
    def mutex_guard_set(self, guard: Instance, value: Any) -> None:
        """``guard.value = v``: stored for the next guard; RuntimeError once released."""
        self.each(guard, f"value = {value!r}", lambda g: setattr(g, "value", value))

    @rule(guard=mutex_guards)
    def mutex_guard_release(self, guard: Instance) -> None:
        """``guard.release()``: unlocks; RuntimeError the second time."""
        if self.call(guard, "release").ok:
            guard.state["mutex"].state["locked"] = False


class FreezeLockRules(ConformanceMachine):
    """``dm.FreezeLock``: writable through a guard until ``freeze()``, then read-only."""

    freeze_locks = Bundle("freeze_locks")
    write_guards = Bundle("write_guards")

    @rule(target=freeze_locks, value=_VALUES)
    def freeze_lock_new(self, value: Any) -> Instance | MultipleResults[Instance]:
        """``FreezeLock(value)``: writable."""
        built = self.build(p.FreezeLock, value)
        if isinstance(built, Instance):
            built.state["writing"] = False
        return built

    # read/freeze/write while this thread's write guard lives: serial raises BorrowError, a
    # parallel backend waits for the writer forever, so those calls are not made then.

    @rule(fl=freeze_locks)
    def freeze_lock_read(self, fl: Instance) -> None:
        """``read()``: the value (frozen or not), when no write guard lives."""
        if not fl.state["writing"]:
            self.call(fl, "read")

    @rule(fl=freeze_locks)
    def freeze_lock_frozen(self, fl: Instance) -> None:
        """``frozen``: whether ``freeze()`` was called."""
        self.read(fl, "frozen")

    @rule(fl=freeze_locks)
    def freeze_lock_freeze(self, fl: Instance) -> None:
        """``freeze()``: the value; idempotent."""
        if not fl.state["writing"]:
            self.call(fl, "freeze")

    @rule(target=write_guards, fl=freeze_locks)
    def freeze_lock_write(self, fl: Instance) -> Instance | MultipleResults[Instance]:
        """``write()``: a write guard; BorrowError once frozen (on every backend)."""
        if fl.state["writing"]:
            return multiple()
        outcomes = self.each(fl, "write()", lambda f: f.write(), _opaque)
        if not outcomes[0].ok:
            return multiple()
        fl.state["writing"] = True
        return self.twins("WriteGuard", outcomes, lock=fl)

    @rule(guard=write_guards)
    def write_guard_get(self, guard: Instance) -> None:
        """``guard.value``: the value; RuntimeError once released."""
        self.read(guard, "value")

    @rule(guard=write_guards, value=_VALUES)
    def write_guard_set(self, guard: Instance, value: Any) -> None:
        """``guard.value = v``: what later reads see; RuntimeError once released."""
        self.each(guard, f"value = {value!r}", lambda g: setattr(g, "value", value))

    @rule(guard=write_guards)
    def write_guard_release(self, guard: Instance) -> None:
        """``guard.release()``: ends the write; RuntimeError the second time."""
        if self.call(guard, "release").ok:
            guard.state["lock"].state["writing"] = False


class OnceCellRules(ConformanceMachine):
    """``dm.OnceCell``: set once, by ``set`` or by the first ``get_or_init``."""

    once_cells = Bundle("once_cells")

    @rule(target=once_cells)
    def once_cell_new(self) -> Instance | MultipleResults[Instance]:
        """``OnceCell()``: empty."""
        return self.build(p.OnceCell)

    @rule(cell=once_cells, default=_VALUES)
    def once_cell_get(self, cell: Instance, default: Any) -> None:
        """``get(default)``: the value, or *default* while empty."""
        self.call(cell, "get", default)

    @rule(cell=once_cells, value=_VALUES)
    def once_cell_set(self, cell: Instance, value: Any) -> None:
        """``set(value)``: True if it was empty (and stored), else False."""
        self.call(cell, "set", value)

    @rule(cell=once_cells)
    def once_cell_is_set(self, cell: Instance) -> None:
        """``is_set()``: whether a value is stored."""
        self.call(cell, "is_set")

    @rule(
        cell=once_cells,
        init=st.sampled_from(["value", "raise", "reenter", "set_inside", "get_inside"]),
        value=_VALUES,
    )
    def once_cell_get_or_init(self, cell: Instance, init: str, value: Any) -> None:
        """``get_or_init(fn)``: the stored value, else fn's result (now stored). fn raising:
        the exception propagates and the cell stays empty. fn asking for its own cell:
        BorrowError on every backend. Inside fn, ``set`` is False and ``get`` the default."""

        def initialiser(obj: p.OnceCell) -> Callable[[], Any]:
            def fn() -> Any:
                if init == "raise":
                    raise _Planned(value)
                if init == "reenter":
                    return obj.get_or_init(_returning(value))
                if init == "set_inside":
                    return (obj.set(value), value)
                if init == "get_inside":
                    return (obj.get("default"), value)
                return value

            return fn

        self.each(
            cell, f"get_or_init(<fn: {init} {value!r}>)", lambda c: c.get_or_init(initialiser(c))
        )


class AtomicIntRules(ConformanceMachine):
    """``dm.AtomicInt``: every operation returns exactly what a plain int would give."""

    atomics = Bundle("atomics")

    @rule(target=atomics, value=_INTS)
    def atomic_new(self, value: int) -> Instance | MultipleResults[Instance]:
        """``AtomicInt(value)``."""
        return self.build(p.AtomicInt, value)

    @rule(atomic=atomics)
    def atomic_load(self, atomic: Instance) -> None:
        """``load()``: the value."""
        self.call(atomic, "load")

    @rule(atomic=atomics, value=_INTS)
    def atomic_store(self, atomic: Instance, value: int) -> None:
        """``store(v)``: None."""
        self.call(atomic, "store", value)

    @rule(atomic=atomics, value=_INTS)
    def atomic_swap(self, atomic: Instance, value: int) -> None:
        """``swap(v)``: the previous value."""
        self.call(atomic, "swap", value)

    @rule(atomic=atomics, delta=_INTS)
    def atomic_fetch_add(self, atomic: Instance, delta: int) -> None:
        """``fetch_add(d)``: the previous value (Python ints: no overflow)."""
        self.call(atomic, "fetch_add", delta)

    @rule(atomic=atomics, delta=_INTS)
    def atomic_fetch_sub(self, atomic: Instance, delta: int) -> None:
        """``fetch_sub(d)``: the previous value."""
        self.call(atomic, "fetch_sub", delta)

    @rule(atomic=atomics, hit=st.booleans(), expected=_INTS, new=_INTS)
    def atomic_compare_exchange(self, atomic: Instance, hit: bool, expected: int, new: int) -> None:
        """``compare_exchange(expected, new)``: the value found; stores *new* only if it was
        *expected*. ``hit`` makes *expected* the current value, so both paths are taken."""
        if hit:
            expected = self.call(atomic, "load").value
        self.call(atomic, "compare_exchange", expected, new)

    @rule(
        atomic=atomics,
        method=st.sampled_from(["store", "swap", "fetch_add", "fetch_sub", "compare_exchange"]),
        operand=st.sampled_from([1.0, 0.5, "1", None]),
    )
    def atomic_bad_operand(self, atomic: Instance, method: str, operand: object) -> None:
        """Any operation given a non-int operand (``1.0`` too; for ``compare_exchange`` as
        *expected*): the same outcome on every backend, a TypeError where an int is needed."""
        if method == "compare_exchange":
            self.call(atomic, method, operand, 7)
        else:
            self.call(atomic, method, operand)


class WorkerLocalRules(ConformanceMachine):
    """``dm.WorkerLocal``: from the calling thread there is one worker: this one."""

    worker_locals = Bundle("worker_locals")

    @rule(target=worker_locals, value=_VALUES, callable_factory=st.booleans())
    def worker_local_new(
        self, value: Any, callable_factory: bool
    ) -> Instance | MultipleResults[Instance]:
        """``WorkerLocal(factory)``: nothing made yet (factory is picklable); TypeError if
        *factory* is not callable."""
        return self.build(p.WorkerLocal, _returning(value) if callable_factory else value)

    @rule(local=worker_locals)
    def worker_local_get(self, local: Instance) -> None:
        """``get()``: this worker's value, made by ``factory()`` the first time."""
        self.call(local, "get")

    @rule(local=worker_locals)
    def worker_local_collect(self, local: Instance) -> None:
        """``collect()``: ``[]`` before any ``get()``, then ``[value]`` (one worker used it)."""
        self.call(local, "collect")


class ShardedDictRules(ConformanceMachine):
    """``dm.ShardedDict``: behaves as one dict (``1``, ``1.0`` and ``True`` are one key)."""

    sharded_dicts = Bundle("sharded_dicts")

    @rule(target=sharded_dicts)
    def sharded_dict_new(self) -> Instance | MultipleResults[Instance]:
        """``ShardedDict()``: empty."""
        return self.build(p.ShardedDict)

    @rule(d=sharded_dicts, key=_KEYS, default=_VALUES)
    def sharded_dict_get(self, d: Instance, key: Any, default: Any) -> None:
        """``get(key, default)``: the value, else *default*."""
        self.call(d, "get", key, default)

    @rule(d=sharded_dicts, key=_KEYS, value=_VALUES)
    def sharded_dict_set(self, d: Instance, key: Any, value: Any) -> None:
        """``set(key, value)``: None."""
        self.call(d, "set", key, value)

    @rule(d=sharded_dicts, key=_KEYS, value=_VALUES)
    def sharded_dict_setdefault(self, d: Instance, key: Any, value: Any) -> None:
        """``setdefault(key, value)``: the existing value, else *value* (now stored)."""
        self.call(d, "setdefault", key, value)

    @rule(d=sharded_dicts, key=_KEYS, value=_VALUES)
    def sharded_dict_get_or_insert_with(self, d: Instance, key: Any, value: Any) -> None:
        """``get_or_insert_with(key, fn)``: the existing value, else ``fn()`` (now stored)."""
        self.call(d, "get_or_insert_with", key, _returning(value))

    @rule(d=sharded_dicts, key=_KEYS, default=st.none() | _VALUES)
    def sharded_dict_pop(self, d: Instance, key: Any, default: Any) -> None:
        """``pop(key)``: the removed value, KeyError if absent; ``pop(key, default)``: the
        default if absent. (None here means: no default argument.)"""
        if default is None:
            self.call(d, "pop", key)
        else:
            self.call(d, "pop", key, default)

    @rule(d=sharded_dicts)
    def sharded_dict_len(self, d: Instance) -> None:
        """``len()``: the number of keys."""
        self.each(d, "__len__()", len)

    @rule(d=sharded_dicts)
    def sharded_dict_items(self, d: Instance) -> None:
        """``items()``: every entry once, compared as a dict (order is unspecified)."""
        self.each(d, "items()", lambda obj: obj.items(), _as_dict)


class QueueRules(ConformanceMachine):
    """``dm.Queue``: ``queue.Queue`` with Python 3.13's ``shutdown``."""

    queues = Bundle("queues")

    @rule(target=queues, maxsize=st.integers(0, 3))
    def queue_new(self, maxsize: int) -> Instance | MultipleResults[Instance]:
        """``Queue(maxsize)``: empty; 0 means unbounded."""
        built = self.build(p.Queue, maxsize)
        if isinstance(built, Instance):
            # unfinished tasks, for join(); None once unknown (an immediate shutdown dropped
            # items: whether that finishes their tasks is left to the backend)
            built.state.update(unfinished=0, shut=False)
        return built

    @staticmethod
    def _mode(mode: str, may_block: bool) -> dict[str, Any]:
        return _QUEUE_ARGS["timeout" if mode == "block" and not may_block else mode]

    @rule(q=queues, item=_VALUES, mode=_QUEUE_MODE)
    def queue_put(self, q: Instance, item: Any, mode: str) -> None:
        """``put(item, block, timeout)``: None; queue.Full when full (non-blocking, or after
        the timeout); QueueShutDown after shutdown; ValueError for a negative timeout."""
        may_block = q.state["shut"] or not self.call(q, "full").value
        if self.call(q, "put", item, **self._mode(mode, may_block)).ok and (
            q.state["unfinished"] is not None
        ):
            q.state["unfinished"] += 1

    @rule(q=queues, mode=_QUEUE_MODE)
    def queue_get(self, q: Instance, mode: str) -> None:
        """``get(block, timeout)``: the oldest item; queue.Empty when empty; QueueShutDown
        when shut down and empty; ValueError for a negative timeout."""
        may_block = q.state["shut"] or self.call(q, "qsize").value > 0
        self.call(q, "get", **self._mode(mode, may_block))

    @rule(q=queues)
    def queue_sizes(self, q: Instance) -> None:
        """``qsize()``, ``empty()``, ``full()``."""
        self.each(q, "(qsize(), empty(), full())", lambda o: (o.qsize(), o.empty(), o.full()))

    @rule(q=queues)
    def queue_task_done(self, q: Instance) -> None:
        """``task_done()``: None; ValueError if called more times than items were put."""
        if self.call(q, "task_done").ok and q.state["unfinished"] is not None:
            q.state["unfinished"] -= 1

    @rule(q=queues)
    def queue_join(self, q: Instance) -> None:
        """``join()``: returns when every put item was marked done. (With unfinished tasks
        it is not called: serial raises BorrowError where parallel would wait forever.)"""
        if q.state["unfinished"] == 0:
            self.call(q, "join")

    @rule(q=queues, immediate=st.booleans())
    def queue_shutdown(self, q: Instance, immediate: bool) -> None:
        """``shutdown(immediate)``: None; puts now raise QueueShutDown, gets drain what is
        left (nothing, if *immediate*) and then raise it."""
        if immediate and self.call(q, "qsize").value:
            q.state["unfinished"] = None
        self.call(q, "shutdown", immediate)
        q.state["shut"] = True


#: Every primitive's rule set, in the order of the design's table.
PRIMITIVE_RULES: tuple[type[ConformanceMachine], ...] = (
    LockRules,
    RLockRules,
    SemaphoreRules,
    EventRules,
    ConditionRules,
    BarrierRules,
    RwLockRules,
    MutexRules,
    OnceCellRules,
    AtomicIntRules,
    WorkerLocalRules,
    ShardedDictRules,
    FreezeLockRules,
    QueueRules,
)


def _leaves(mixins: Sequence[type[ConformanceMachine]]) -> tuple[type[ConformanceMachine], ...]:
    """*mixins* without those another one already inherits (so that a valid MRO exists)."""
    unique = list(dict.fromkeys(mixins))
    return tuple(m for m in unique if not any(o is not m and issubclass(o, m) for o in unique))


class PrimitiveConformance(*_leaves(PRIMITIVE_RULES)):  # type: ignore[misc]
    """Every primitive's rules in one machine (not runnable until given backends)."""


# -- parallel iteration -----------------------------------------------------------------------
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


#: The exceptions a workload raises on purpose.
WORKLOAD_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, ZeroDivisionError)

_ITEM = st.integers(-20, 20)
# Hypothesis favours short lists: the second branch makes half of them long enough to be cut
# into several chunks of several items
_ITEMS = st.lists(_ITEM, max_size=40) | st.lists(_ITEM, min_size=10, max_size=40)
_WORKLOAD_ERROR = st.sampled_from(WORKLOAD_ERRORS)
_CHUNKSIZE = st.none() | st.integers(1, 10)
# one-argument functions: par_map(fn, items)
_FNS: st.SearchStrategy[functools.partial[int]] = st.one_of(
    st.builds(functools.partial, st.just(affine), st.integers(-3, 3), st.integers(-5, 5)),
    st.builds(functools.partial, st.just(modulo), st.integers(0, 5)),
    st.builds(functools.partial, st.just(fails_when), st.integers(1, 5), _WORKLOAD_ERROR),
)
# zero-argument functions (join, broadcast): one of the above bound to an item as well
_THUNKS: st.SearchStrategy[functools.partial[int]] = st.builds(functools.partial, _FNS, _ITEM)


def _short_name(cls: type) -> str:
    return cls.__name__ if cls.__module__ == "builtins" else _qualname(cls)


@dataclass(frozen=True)
class Failure:
    """An exception as the equivalence contract compares it across backends: its class and
    message; for a :class:`~dualmode.ParallelError`, every failure (recursively) and
    ``.indices``, in order. The group's own message is left out: it only counts them.

    ``Failure.of`` is the ``errors=`` normalizer of :meth:`ConformanceMachine.compare` for
    calls whose exceptions come from user code, so that their messages must match too.
    """

    kind: str
    message: str = ""
    errors: tuple[Failure, ...] = ()
    indices: tuple[int, ...] | None = None  # None: not a ParallelError

    @classmethod
    def of(cls, exc: Exception) -> Failure:
        kind = _short_name(type(exc))
        if isinstance(exc, ParallelError):
            return cls(kind, errors=tuple(map(cls.of, exc.exceptions)), indices=tuple(exc.indices))
        return cls(kind, str(exc))

    def __repr__(self) -> str:
        if self.indices is None:
            return f"{self.kind}({self.message!r})"
        if not self.indices:  # folded (see _distinct_failures): the errors alone
            inner = ", ".join(map(repr, self.errors))
        elif len(self.indices) == len(self.errors):
            inner = ", ".join(
                f"[{i}] {e!r}" for i, e in zip(self.indices, self.errors, strict=True)
            )
        else:
            inner = f"errors={list(self.errors)!r}, indices={list(self.indices)!r}"
        return f"{self.kind}({inner})"


def _result_of(handle: parallel.TaskHandle[Any]) -> Any:
    """A scope task's ``result()``: its value, or the :class:`Failure` it raised."""
    try:
        return handle.result()
    except Exception as exc:
        return Failure.of(exc)


def _run_scope(
    backend: Backend,
    tasks: Sequence[tuple[Callable[[int], Any], int]],
    body_error: type[Exception] | None,
) -> tuple[Outcome, Outcome]:
    """``with scope(): spawn(fn, x)`` for every task, then raise *body_error* if given.

    Returns how the ``with`` block exited, and every handle's result (a value or a
    :class:`Failure`), in spawn order.
    """
    handles: list[parallel.TaskHandle[Any]] = []

    def run() -> None:
        with parallel.scope(backend=backend) as s:
            for fn, x in tasks:
                handles.append(s.spawn(fn, x))
            if body_error is not None:
                raise body_error("raised by the scope's body")

    exit_outcome = Outcome.of(run)
    return exit_outcome, Outcome(value=tuple(_result_of(h) for h in handles))


def _distinct(values: Any) -> Any:
    """Normalizer for ``broadcast`` of a pure function: its distinct results, as a list."""
    if not isinstance(values, list):
        return values
    seen: list[Any] = []
    for value in values:
        if not any(_same(value, s) for s in seen):
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
    """Parallel iteration (issue 3): the same workload, values and failures, gives the same
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
            _render_call("par_map", (fn, items), {"chunksize": chunksize}),
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
        outcomes = [
            Outcome.of(
                lambda b, c: parallel.par_for_each(
                    functools.partial(tally, c, fn), items, chunksize=chunksize, backend=b
                ),
                backend,
                obj,
            )
            for backend, obj in zip(self.backends, counter.objs, strict=True)
        ]
        work = f"partial(tally, {counter}, {_render(fn)})"
        what = f"par_for_each({work}, {items!r}, chunksize={chunksize!r})"
        self.compare(what, outcomes, errors=Failure.of)
        self.call(counter, "load")

    @rule(fa=_THUNKS, fb=_THUNKS)
    def join(self, fa: Callable[[], int], fb: Callable[[], int]) -> None:
        """``join(fa, fb)``: ``(fa(), fb())``; if either fails, both still ran and one
        ParallelError holds the failures, fa's first."""
        self.each_backend(
            _render_call("join", (fa, fb), {}),
            lambda b: parallel.join(fa, fb, backend=b),
            errors=Failure.of,
        )

    @rule(
        tasks=st.lists(st.tuples(_FNS, _ITEM), max_size=8),
        body_error=st.none() | _WORKLOAD_ERROR,
    )
    def scope(
        self, tasks: list[tuple[Callable[[int], int], int]], body_error: type[Exception] | None
    ) -> None:
        """``with scope() as s: s.spawn(fn, x)...``: each handle's ``result()`` is its task's
        value or exception; at exit one ParallelError holds the failures in spawn order, the
        body's own exception first; a body that fails alone raises its exception as itself."""
        steps = [_render_call("spawn", task, {}) for task in tasks]
        if body_error is not None:
            steps.append(f"raise {body_error.__name__}")
        what = f"with scope(): {'; '.join(steps) or 'pass'}"
        runs = [_run_scope(backend, tasks, body_error) for backend in self.backends]
        self.compare(
            f"{what} (its exit)", [exit_outcome for exit_outcome, _ in runs], errors=Failure.of
        )
        self.compare(f"{what} (each handle's result())", [results for _, results in runs])

    @rule(fn=_THUNKS)
    def broadcast(self, fn: Callable[[], int]) -> None:
        """``broadcast(fn)``: ``fn()`` once on every worker (serial has one, threads and
        processes as many as they were built with), so one result per worker, or one
        ParallelError with one failure per worker at indices ``0..workers-1``; across
        backends, the distinct results (or failures) are the same."""
        what = _render_call("broadcast", (fn,), {})
        outcomes = [
            Outcome.of(lambda b: parallel.broadcast(fn, backend=b), backend)
            for backend in self.backends
        ]
        for backend, outcome in zip(self.backends, outcomes, strict=True):
            _check_one_per_worker(backend, what, outcome)
        self.compare(f"{what}, distinct results", outcomes, _distinct, errors=_distinct_failures)


def _check_one_per_worker(backend: Backend, what: str, outcome: Outcome) -> None:
    """``broadcast`` ran once on each of *backend*'s workers: as many results (or failures,
    at indices ``0..workers-1``) as workers.

    Raises:
        Divergence: naming the backend, what it gave and its worker count.
    """
    if isinstance(outcome.error, ParallelError):
        count, indices = len(outcome.error.exceptions), list(outcome.error.indices)
    elif outcome.ok and isinstance(outcome.value, list):
        count, indices = len(outcome.value), list(range(len(outcome.value)))
    else:
        return  # another exception, or not a list: the comparison across backends reports it
    if count != backend.workers or indices != list(range(backend.workers)):
        raise Divergence(
            f"{backend.name} (workers={backend.workers}): {what} "
            f"{outcome.describe(_identity, Failure.of)}: {count} results, expected one per "
            "worker"
        )


# -- queries ----------------------------------------------------------------------------------
# A generated program of pure queries over small int keys and three inputs. The cycles it makes
# are rings that are wholly guarded (every member has a cycle= fallback) or wholly not: those
# settle the same way whatever the schedule (every member takes its fallback, or every member
# the same CycleError), so they are part of the contract. Rings whose members only partly have
# fallbacks are not generated: where such a ring is closed can change its result (salsa
# answers that with fixpoint iteration; dualmode does not).

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

    ``ring`` lists the nodes that lie on the generated cycles.
    """

    deps: tuple[tuple[int, ...], ...]
    fails: frozenset[int] = frozenset()
    catches: frozenset[int] = frozenset()
    guarded: frozenset[int] = frozenset()
    slow: frozenset[int] = frozenset()
    reads: frozenset[int] = frozenset()
    volatile: frozenset[int] = frozenset()
    ring: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        edges = ", ".join(f"{i}->{list(d)}" for i, d in enumerate(self.deps))
        names = ("fails", "catches", "guarded", "slow", "reads", "volatile", "ring")
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
        """The (query, key) executed since the last call, sorted."""
        with self.log.lock() as guard:
            log, guard.value = guard.value, ()
        return sorted(log)

    def ask(self, i: int) -> Any:
        """Node *i* through the query the graph says."""
        graph = self.graph
        if i in graph.guarded:
            return self.guarded(i)
        return (self.changing if i in graph.volatile else self.node)(i)

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
    """Graphs of pure nodes (a DAG), rings (cycles, each wholly guarded or not, whose members
    also read pure nodes before or after their ring edge), and outer nodes that read any of
    them without closing new cycles."""
    n_pure = draw(st.integers(0, 4))
    ring_sizes = draw(st.lists(st.integers(1, 3), max_size=2))
    n_outer = min(4, draw(st.integers(0, max(0, max_nodes - n_pure - sum(ring_sizes)))))
    pure = list(range(n_pure))
    deps: list[list[int]] = [
        draw(st.lists(st.sampled_from(pure[i + 1 :]), max_size=3)) if i + 1 < n_pure else []
        for i in pure
    ]
    guarded: set[int] = set()
    members: list[int] = []
    for size in ring_sizes:
        ring = list(range(len(deps), len(deps) + size))
        ring_guarded = draw(st.booleans())
        for k, i in enumerate(ring):
            own = draw(st.lists(st.sampled_from(pure), max_size=2)) if pure else []
            own.insert(draw(st.integers(0, len(own))), ring[(k + 1) % size])
            deps.append(own)
            if ring_guarded:
                guarded.add(i)
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
    )


def ask_node(db: GraphDatabase, i: int) -> tuple[str, Any]:
    """Node *i*'s value, or its exception as ``Failure`` text: one request of a batch."""
    try:
        return "value", db.ask(i)
    except Exception as exc:
        return "raised", repr(Failure.of(exc))


def ask_every_node(db: GraphDatabase) -> list[tuple[str, Any]]:
    """Every node's value (or exception), asked one after another from this thread."""
    return [ask_node(db, i) for i in range(len(db.graph.deps))]


_DURABILITY = st.sampled_from(list(Durability))


@register_rules
class QueryRules(ConformanceMachine):
    """The query engine (issues 4 and 5): generated graphs of pure queries over inputs, asked
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


# -- building and running ---------------------------------------------------------------------


def default_rules() -> tuple[type[ConformanceMachine], ...]:
    """Every primitive's rule set, then every mixin registered with :func:`register_rules`."""
    return (*PRIMITIVE_RULES, *RULE_MIXINS)


def conformance_machine(
    backends: Sequence[BackendSpec],
    *,
    rules: Sequence[type[ConformanceMachine]] | None = None,
) -> type[RuleBasedStateMachine]:
    """A runnable machine comparing *backends* (names or instances; the first is the reference).

    *rules*: the rule mixins combined into the machine; by default :func:`default_rules`, i.e.
    :class:`PrimitiveConformance` plus every registered mixin. Names are resolved (to the
    shared instance, as ``dm.use`` does) when the machine first runs; pass instances to
    control their lifetime.

    Raises:
        ValueError: *backends* or *rules* is empty.
    """
    specs = tuple(backends)
    mixins = _leaves(rules if rules is not None else default_rules())
    if not specs or not mixins:
        raise ValueError("conformance_machine() needs at least one backend and one rule set")
    if set(mixins) >= set(_leaves(PRIMITIVE_RULES)):
        mixins = (*(m for m in mixins if m not in PRIMITIVE_RULES), PrimitiveConformance)
    title = "+".join(m.__name__ for m in mixins)
    names = ",".join(s if isinstance(s, str) else s.name for s in specs)
    return type(f"{title}[{names}]", mixins, {"backend_specs": specs})


def run_conformance(
    backend: BackendSpec,
    *,
    reference: BackendSpec = "serial",
    workers: int | None = 2,
    max_examples: int = 100,
    stateful_step_count: int = 30,
    rules: Sequence[type[ConformanceMachine]] | None = None,
    settings: hypothesis.settings | None = None,
) -> None:
    """Check that *backend* gives the same results as *reference* for random programs.

    Each rule set in *rules* (default: :func:`default_rules`: one per primitive, then every
    registered one, such as :class:`ParallelRules`) first runs as a machine of its own, whose
    programs stay on one primitive and so reach deep states (a Queue that was filled, shut down
    and drained) within *max_examples*; then all of them run together in one machine.
    *max_examples* and *stateful_step_count* apply to each machine.

    A backend named here is instantiated fresh and closed afterwards, so is a named reference
    (``run_conformance("serial")`` compares two serial instances); both get *workers* workers
    (serial always has one). The default, 2, keeps parallel backends comparable and cheap:
    ``broadcast`` runs on every worker; None means the backend's default. A Backend instance
    is used as is and left open. *settings* is a parent for the Hypothesis settings
    (e.g. ``database=None``); this function always sets ``deadline=None`` and lets slow steps
    pass the ``too_slow`` health check.

    Raises:
        Divergence: a program for which the backends disagree, shrunk and printed by Hypothesis.
        ConfigError: a named backend is unknown or unavailable here.
    """
    rule_sets = list(rules if rules is not None else default_rules())
    parent = settings if settings is not None else hypothesis.settings()
    run_settings = hypothesis.settings(
        parent,
        max_examples=max_examples,
        stateful_step_count=stateful_step_count,
        deadline=None,
        suppress_health_check=[*parent.suppress_health_check, hypothesis.HealthCheck.too_slow],
    )
    opened: list[Backend] = []
    try:
        specs: list[BackendSpec] = []
        for spec in (reference, backend):
            if isinstance(spec, str):
                spec = load_backend(spec)(workers)
                opened.append(spec)
            specs.append(spec)
        machines = [[rule_set] for rule_set in rule_sets]
        if len(rule_sets) > 1:
            machines.append(rule_sets)
        for mixins in machines:
            machine = conformance_machine(specs, rules=mixins)
            run_state_machine_as_test(machine, settings=run_settings)
    finally:
        for opened_backend in reversed(opened):
            opened_backend.close()
