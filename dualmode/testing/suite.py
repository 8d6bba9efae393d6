"""The suite: which rule sets a conformance run combines, how they become a runnable machine,
and the run a backend author starts.

:func:`run_conformance` first runs each rule set as a machine of its own (programs that stay
on one primitive reach deep states quickly), then all of them in one machine;
:func:`conformance_machine` builds the machine class for a pytest suite. See
docs/architecture.md#the-conformance-kit and docs/testing.md#the-conformance-suite.
"""

from __future__ import annotations

from collections.abc import Sequence

import hypothesis
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from ..backend import Backend
from ..config import BackendSpec, load_backend
from . import machine
from .machine import ConformanceMachine, leaves
from .primitive_rules import PRIMITIVE_RULES, PrimitiveConformance

__all__ = ["conformance_machine", "default_rules", "run_conformance"]


def default_rules() -> tuple[type[ConformanceMachine], ...]:
    """Every primitive's rule set, then every mixin registered with
    :func:`~dualmode.testing.register_rules` (the parallel and query rule families among them),
    in the order they were registered."""
    return (*PRIMITIVE_RULES, *machine.RULE_MIXINS)  # read now: registration may come later


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
    mixins = leaves(rules if rules is not None else default_rules())
    if not specs or not mixins:
        raise ValueError("conformance_machine() needs at least one backend and one rule set")
    if set(mixins) >= set(leaves(PRIMITIVE_RULES)):
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
            runnable = conformance_machine(specs, rules=mixins)
            run_state_machine_as_test(runnable, settings=run_settings)
    finally:
        for opened_backend in reversed(opened):
            opened_backend.close()
