"""The conformance kit: one random program, run on several backends, must observe the same.

The equivalence contract (docs/architecture.md#the-conformance-kit) says a program gives the
same observable results on every backend. The kit checks it the way Hypothesis checks its own
stateful code: a :class:`~hypothesis.stateful.RuleBasedStateMachine` draws a sequence of
operations (build a Lock, ``acquire(blocking=False)`` it, ``release`` it twice, build a Queue,
``put``...) and applies each step to one instance per backend. After every step each backend
must have returned an equal value (of the same type), or raised an exception of the same class.
The first backend is the reference, normally ``"serial"``; any difference raises
:class:`Divergence`, which Hypothesis then shrinks to a minimal program and prints.

For backend authors::

    python -c "from dualmode.testing import run_conformance; run_conformance('mybackend')"

or, in a pytest suite, ``TestMine = conformance_machine(["serial", "mybackend"]).TestCase``.

The kit needs Hypothesis, which comes with the extra ``dualmode[testing]``. Its modules:

- :mod:`~dualmode.testing.observation`: what one backend observed for a step
  (:class:`Observation`), how exceptions compare (:class:`Failure`), :class:`Divergence`;
- :mod:`~dualmode.testing.machine`: :class:`ConformanceMachine`, the base of every rule set,
  with the helpers rules are written with (``build``, ``call``, ``each``, ``each_backend``),
  and :func:`register_rules`;
- the three rule families, one rule set (a mixin) per concept and one rule per operation:
  :mod:`~dualmode.testing.primitive_rules` (``LockRules`` ... ``QueueRules``),
  :mod:`~dualmode.testing.parallel_rules` (:class:`ParallelRules`) and
  :mod:`~dualmode.testing.query_rules` (:class:`QueryRules`);
- :mod:`~dualmode.testing.suite`: :func:`default_rules`, :func:`conformance_machine` and
  :func:`run_conformance`.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    import hypothesis  # noqa: F401  (every module of the kit is built on it)
except ModuleNotFoundError as exc:
    if exc.name != "hypothesis":
        raise
    raise ModuleNotFoundError(
        "dualmode.testing (the conformance kit) needs Hypothesis, which is not installed here; "
        "install it with: pip install 'dualmode[testing]'",
        name="hypothesis",
    ) from exc

from .machine import RULE_MIXINS, TINY, ConformanceMachine, Instance, register_rules
from .observation import Divergence, Failure, Observation
from .parallel_rules import (
    WORKLOAD_ERRORS,
    ParallelRules,
    affine,
    counted,
    fails_when,
    modulo,
    tally,
)
from .primitive_rules import (
    PRIMITIVE_RULES,
    AtomicIntRules,
    BarrierRules,
    ConditionRules,
    EventRules,
    FreezeLockRules,
    LockRules,
    MutexRules,
    OnceCellRules,
    PrimitiveConformance,
    QueueRules,
    RLockRules,
    RwLockRules,
    SemaphoreRules,
    ShardedDictRules,
    WorkerLocalRules,
)
from .query_rules import (
    INPUTS,
    GraphDatabase,
    QueryGraph,
    QueryRules,
    ask_every_node,
    ask_node,
    query_graphs,
)
from .suite import conformance_machine, default_rules, run_conformance

__all__ = [
    "INPUTS",
    "PRIMITIVE_RULES",
    "RULE_MIXINS",
    "TINY",
    "WORKLOAD_ERRORS",
    "AtomicIntRules",
    "BarrierRules",
    "ConditionRules",
    "ConformanceMachine",
    "Divergence",
    "EventRules",
    "Failure",
    "FreezeLockRules",
    "GraphDatabase",
    "Instance",
    "LockRules",
    "MutexRules",
    "Observation",
    "OnceCellRules",
    "ParallelRules",
    "PrimitiveConformance",
    "QueryGraph",
    "QueryRules",
    "QueueRules",
    "RLockRules",
    "RwLockRules",
    "SemaphoreRules",
    "ShardedDictRules",
    "WorkerLocalRules",
    "affine",
    "ask_every_node",
    "ask_node",
    "conformance_machine",
    "counted",
    "default_rules",
    "fails_when",
    "modulo",
    "query_graphs",
    "register_rules",
    "run_conformance",
    "tally",
]


def __getattr__(name: str) -> Any:
    if name == "Outcome":
        warnings.warn(
            "dualmode.testing.Outcome was renamed dualmode.testing.Observation (what one "
            "backend observed for a step; dualmode.backend.Outcome is a backend's (ok, value) "
            "for one call); import Observation instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return Observation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
