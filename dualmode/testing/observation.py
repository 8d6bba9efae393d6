"""What a step of a conformance program observed on one backend, and how two observations compare.

The equivalence contract (docs/architecture.md#the-conformance-kit) compares backends by what a
caller can observe: the value a call returned, compared by type all the way down (``1``,
``1.0`` and ``True`` differ), or the class of the exception it raised; for calls whose
exceptions come from user code (a workload, a query body) also their messages, through
:class:`Failure`. Backends that observe different things for one step raise
:class:`Divergence`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import primitives as p
from ..errors import ParallelError

__all__ = ["Divergence", "Failure", "Observation", "same"]


class Divergence(AssertionError):
    """Two backends gave different observable results for the same step."""


def same(a: object, b: object) -> bool:
    """Equal, and of the same type all the way down: ``1``, ``1.0`` and ``True`` differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        if len(a) != len(b):
            return False
        for key, value in a.items():
            # dicts keep the first key inserted among equal ones (1 vs True): compare that too
            other = next((k for k in b if k == key), p.MISSING)
            if other is p.MISSING or not same(key, other) or not same(value, b[other]):
                return False
        return True
    return a == b


# -- normalizers: what of a value the comparison looks at --------------------------------------


def identity(value: Any) -> Any:
    """The default normalizer: the whole value."""
    return value


def opaque(value: Any) -> str | None:
    """Normalizer for per-backend objects (a new primitive, a guard): only None-ness compares."""
    return None if value is None else "<object>"


def as_dict(items: Any) -> tuple[int, dict[Any, Any]]:
    """Normalizer for ``ShardedDict.items()``: order is unspecified, duplicates are a bug."""
    pairs = list(items)
    return len(pairs), dict(pairs)


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_name(cls: type) -> str:
    return cls.__name__ if cls.__module__ == "builtins" else qualname(cls)


@dataclass(frozen=True)
class Observation:
    """What one backend's call did: returned :attr:`value`, or raised :attr:`error`.

    (Not :data:`dualmode.backend.Outcome`, the ``(ok, value)`` pair a backend reports for one
    call of parallel work: an Observation is the kit's record of a step, kept for comparison.)
    """

    value: Any = None
    error: Exception | None = None

    @classmethod
    def of(cls, fn: Callable[..., Any], *args: Any) -> Observation:
        """Call ``fn(*args)`` and record its result or its exception."""
        try:
            return cls(value=fn(*args))
        except Exception as exc:  # any exception is an observable result to compare
            return cls(error=exc)

    @property
    def ok(self) -> bool:
        """Whether the call returned (rather than raised)."""
        return self.error is None

    def matches(
        self,
        other: Observation,
        normalize: Callable[[Any], Any],
        errors: Callable[[Exception], Any] | None = None,
    ) -> bool:
        """Both returned and the normalized values are the same, or both raised an exception of
        the same class (and, given *errors*, the same ``errors(exc)``: e.g. :meth:`Failure.of`
        where messages come from user code and must match too)."""
        if self.error is None or other.error is None:
            return self.error is other.error and same(normalize(self.value), normalize(other.value))
        if type(self.error) is not type(other.error):
            return False
        return errors is None or same(errors(self.error), errors(other.error))

    def describe(
        self, normalize: Callable[[Any], Any], errors: Callable[[Exception], Any] | None = None
    ) -> str:
        """``returned <value>`` or ``raised <exception>``, as a Divergence message shows it."""
        if self.error is not None:
            if errors is not None:
                return f"raised {errors(self.error)!r}"
            return f"raised {qualname(type(self.error))}({self.error})"
        return f"returned {normalize(self.value)!r}"


@dataclass(frozen=True)
class Failure:
    """An exception as the equivalence contract compares it across backends: its class and
    message; for a :class:`~dualmode.ParallelError`, every failure (recursively) and
    ``.indices``, in order. The group's own message is left out: it only counts them.

    ``Failure.of`` is the ``errors=`` normalizer of
    :meth:`~dualmode.testing.ConformanceMachine.compare` for calls whose exceptions come from
    user code, so that their messages must match too.
    """

    kind: str
    message: str = ""
    errors: tuple[Failure, ...] = ()
    indices: tuple[int, ...] | None = None  # None: not a ParallelError

    @classmethod
    def of(cls, exc: Exception) -> Failure:
        """*exc* as compared: its class and message, or a ParallelError's every failure."""
        kind = _short_name(type(exc))
        if isinstance(exc, ParallelError):
            return cls(kind, errors=tuple(map(cls.of, exc.exceptions)), indices=tuple(exc.indices))
        return cls(kind, str(exc))

    def __repr__(self) -> str:
        if self.indices is None:
            return f"{self.kind}({self.message!r})"
        if not self.indices:  # folded (broadcast's distinct failures): the errors alone
            inner = ", ".join(map(repr, self.errors))
        elif len(self.indices) == len(self.errors):
            inner = ", ".join(
                f"[{i}] {e!r}" for i, e in zip(self.indices, self.errors, strict=True)
            )
        else:
            inner = f"errors={list(self.errors)!r}, indices={list(self.indices)!r}"
        return f"{self.kind}({inner})"
