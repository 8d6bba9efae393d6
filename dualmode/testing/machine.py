"""The base of every conformance machine: the backends under comparison and the rule helpers.

A rule set (a mixin) subclasses :class:`ConformanceMachine` and writes each rule with its
helpers: :meth:`~ConformanceMachine.build` makes one object per backend (an :class:`Instance`),
:meth:`~ConformanceMachine.call` and :meth:`~ConformanceMachine.each` run one operation on each
twin, :meth:`~ConformanceMachine.each_backend` runs an operation that belongs to no object.
Every helper compares the backends' observations against the reference's (``backends[0]``)
and raises :class:`~dualmode.testing.Divergence` at the first difference, naming the step and
what each backend did. :func:`register_rules` adds a rule set to the default machines. See
docs/architecture.md#the-conformance-kit.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hypothesis.stateful import MultipleResults, RuleBasedStateMachine, multiple

from ..backend import Backend
from ..config import BackendSpec, resolve_backend
from .observation import Divergence, Observation, identity, opaque

__all__ = [
    "EVENT_LOOPS",
    "RULE_MIXINS",
    "TINY",
    "ConformanceMachine",
    "Instance",
    "in_task",
    "register_rules",
    "returning",
]

#: The timeout of every timed call: it fails at once on serial and after 1 ms in parallel.
TINY = 0.001

M = TypeVar("M", bound="type[ConformanceMachine]")

# The variants of a threading-style timed acquire (ConformanceMachine.acquire); "bad-args"
# must raise ValueError, as in threading.
ACQUIRE_ARGS: dict[str, dict[str, Any]] = {
    "nonblocking": {"blocking": False},
    "timeout": {"timeout": TINY},
    "blocking": {},
    "bad-args": {"blocking": False, "timeout": 1.0},
    "negative-timeout": {"timeout": -2},  # ValueError for locks; a semaphore treats it as 0
}


# The same variants for an async twin (ConformanceMachine.async_acquire): its ``timeout`` only.
ASYNC_ACQUIRE_ARGS: dict[str, dict[str, Any]] = {
    "nowait": {"timeout": 0},
    "timeout": {"timeout": TINY},
    "blocking": {},
    "negative-timeout": {"timeout": -2},  # ValueError for every async twin
}

#: The event loops an async rule drives its step from: asyncio, and trio where it is installed
#: (the kit needs only anyio, a dependency of dualmode).
EVENT_LOOPS: tuple[str, ...] = ("asyncio",) + (
    ("trio",) if importlib.util.find_spec("trio") is not None else ()
)


def in_task(loop: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``await fn(*args, **kwargs)`` in a task of a new *loop* event loop ("asyncio" or
    "trio") run in this thread, as a program's async code would; its value, or its exception.
    One loop per step: a step's observation cannot depend on an earlier step's loop."""
    import anyio  # imported on first use: the sync rules never need it

    return anyio.run(functools.partial(fn, *args, **kwargs), backend=loop)


def _const(value: Any) -> Any:
    return value


def returning(value: Any) -> functools.partial[Any]:
    """A picklable zero-argument callable returning *value* (factories, predicates); a
    program prints it as ``<fn returning value>``."""
    return functools.partial(_const, value)


def render_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``method(arg, ..., key=value)`` as a step of a printed program."""
    parts = [render(a) for a in args] + [f"{k}={render(v)}" for k, v in kwargs.items()]
    return f"{method}({', '.join(parts)})"


def render(value: Any) -> str:
    if isinstance(value, functools.partial):
        if value.func is _const:
            return f"<fn returning {value.args[0]!r}>"
        return f"partial({', '.join([value.func.__name__, *map(render, value.args)])})"
    if isinstance(value, type):
        return value.__name__
    return repr(value)


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


class ConformanceMachine(RuleBasedStateMachine):
    """Base of every conformance machine: the backends under comparison and the helpers.

    Subclass it to write a rule set (a mixin): every rule runs one operation on every backend
    through :meth:`call`, :meth:`each` or :meth:`build`, which raise
    :class:`~dualmode.testing.Divergence` as soon as a backend's observation differs from the
    reference's (``backends[0]``). Build a runnable machine with
    :func:`~dualmode.testing.conformance_machine`, which sets :attr:`backend_specs`.
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
        observations: Sequence[Observation],
        normalize: Callable[[Any], Any] = identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> Observation:
        """Check that every backend's observation of step *what* matches the reference's;
        return the reference's.

        Values compare after *normalize*; exceptions by class, and also by ``errors(exc)`` if
        *errors* is given (see :meth:`Observation.matches`).

        Raises:
            Divergence: naming the step and every backend's observation.
        """
        reference = observations[0]
        if all(reference.matches(o, normalize, errors) for o in observations[1:]):
            return reference
        lines = [
            f"  {b.name}: {o.describe(normalize, errors)}"
            for b, o in zip(self.backends, observations, strict=True)
        ]
        raise Divergence(f"backends disagree on {what}:\n" + "\n".join(lines))

    def each(
        self,
        inst: Instance,
        what: str,
        op: Callable[[Any], Any],
        normalize: Callable[[Any], Any] = identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> list[Observation]:
        """Run ``op(obj)`` on *inst*'s twin on every backend, compare, return every observation.

        Use it when the per-backend results are needed afterwards (guards), or the operation
        is not a plain method call (a property).
        """
        observations = [Observation.of(op, obj) for obj in inst.objs]
        self.compare(f"{inst}.{what}", observations, normalize, errors=errors)
        return observations

    def each_backend(
        self,
        what: str,
        op: Callable[[Backend], Any],
        normalize: Callable[[Any], Any] = identity,
        *,
        errors: Callable[[Exception], Any] | None = None,
    ) -> list[Observation]:
        """Run ``op(backend)`` for every backend, compare, return every observation.

        The helper for operations that belong to no primitive, e.g. a rule set for parallel
        iteration: ``self.each_backend("par_map", lambda b: dm.par_map(f, xs, backend=b))``.
        """
        observations = [Observation.of(op, backend) for backend in self.backends]
        self.compare(what, observations, normalize, errors=errors)
        return observations

    def call(self, inst: Instance, method: str, *args: Any, **kwargs: Any) -> Observation:
        """``inst.method(*args, **kwargs)`` on every backend; the (agreed) reference's
        observation."""
        observations = self.each(
            inst,
            render_call(method, args, kwargs),
            lambda obj: getattr(obj, method)(*args, **kwargs),
        )
        return observations[0]

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

        what = render_call(cls.__name__, args, kwargs)
        observations = [Observation.of(construct, i, b) for i, b in enumerate(self.backends)]
        if not self.compare(what, observations, opaque).ok:
            return multiple()
        for backend, observation in zip(self.backends, observations, strict=True):
            obj = observation.value
            if not isinstance(obj, cls):
                raise Divergence(
                    f"{backend.name}: {what} built {type(obj).__qualname__}, which is not a "
                    f"subclass of dualmode.{cls.__name__}"
                )
            if obj.backend is not backend:
                raise Divergence(f"{backend.name}: {what}.backend is {obj.backend!r}")
        objs = tuple(o.value for o in observations)
        return Instance(f"{cls.__name__}#{next(self._labels)}", objs, kind=cls)

    def call_async(
        self, inst: Instance, loop: str, method: str, *args: Any, **kwargs: Any
    ) -> Observation:
        """``await inst.method(*args, **kwargs)`` from a task on a *loop* event loop, on every
        backend; the (agreed) reference's observation."""
        observations = self.each(
            inst,
            f"{render_call(method, args, kwargs)} awaited on {loop}",
            lambda obj: in_task(loop, getattr(obj, method), *args, **kwargs),
        )
        return observations[0]

    def read(self, inst: Instance, attr: str) -> Any:
        """The property ``inst.attr`` on every backend; the (agreed) reference value."""
        return self.each(inst, attr, lambda obj: getattr(obj, attr))[0].value

    def twins(self, label: str, observations: Sequence[Observation], **state: Any) -> Instance:
        """An :class:`Instance` of per-backend results of one agreed step (guards)."""
        return Instance(
            f"{label}#{next(self._labels)}", tuple(o.value for o in observations), dict(state)
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
        return self.call(inst, method, **ACQUIRE_ARGS[how]).value is True

    def async_acquire(
        self,
        inst: Instance,
        loop: str,
        how: str,
        *,
        may_block: bool,
        method: str = "async_acquire",
    ) -> bool:
        """One variant of an async twin's acquire (``await inst.method(timeout=...)``) from a
        task on *loop*, on every backend; True if it succeeded. *how*: ``nowait`` (0 s),
        ``timeout`` (1 ms), ``blocking`` (no timeout: only if *may_block*, else 1 ms) or
        ``negative-timeout`` (ValueError)."""
        if how == "blocking" and not may_block:
            how = "timeout"
        return self.call_async(inst, loop, method, **ASYNC_ACQUIRE_ARGS[how]).value is True


#: Rule mixins added to every machine that :func:`~dualmode.testing.conformance_machine`
#: builds by default, in the order they were registered.
RULE_MIXINS: list[type[ConformanceMachine]] = []


def register_rules(mixin: M) -> M:
    """Class decorator: add a :class:`ConformanceMachine` subclass to :data:`RULE_MIXINS`.

    Raises:
        TypeError: *mixin* is not a ConformanceMachine subclass.
    """
    if not (isinstance(mixin, type) and issubclass(mixin, ConformanceMachine)):
        raise TypeError(f"{mixin!r} is not a ConformanceMachine subclass")
    if mixin not in RULE_MIXINS:
        RULE_MIXINS.append(mixin)
    return mixin


def leaves(mixins: Sequence[type[ConformanceMachine]]) -> tuple[type[ConformanceMachine], ...]:
    """*mixins* without those another one already inherits (so that a valid MRO exists)."""
    unique = list(dict.fromkeys(mixins))
    return tuple(m for m in unique if not any(o is not m and issubclass(o, m) for o in unique))
