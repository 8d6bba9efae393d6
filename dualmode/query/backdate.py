"""Backdate: a re-executed query that gave what it gave before keeps its old "changed" revision.

The step after an execution that had an older memo (salsa's backdating; see
``dualmode.query.runtime`` and ``docs/architecture.md#the-query-protocol``): what depends on
the query compares that revision with its own last verification, so it stays green and the
wave of re-execution stops here.
"""

from __future__ import annotations

from .job_table import Verdict
from .memo import Memo, MemoState

__all__ = ["backdate"]

BACKDATED, EXECUTED = Verdict.BACKDATED, Verdict.EXECUTED  # see dualmode.query.job_table
OK = MemoState.OK


def backdate(old: Memo | None, new: Memo, *, recomputed: bool = False) -> Verdict:
    """Backdate *new* (give it *old*'s ``changed_at``) if it equals *old*, or if it was
    *recomputed*: *old*'s value was evicted (``lru=``) and nothing it read has changed, so
    the body, a function of what it reads, gave the same result again. The verdict.

    Not when its durability fell (as in salsa): its dependents were verified under the old,
    higher durability, and would stay green through a change that the lower one admits."""
    if (
        old is not None
        and new.durability >= old.durability
        and (recomputed or _same_result(old, new))
    ):
        new.changed_at = old.changed_at
        return BACKDATED
    return EXECUTED


def _same_result(old: Memo, new: Memo) -> bool:
    """Whether a re-executed query gave what it gave before."""
    if old.state is not new.state:
        return False
    if new.state is OK:
        try:
            return bool(old.value == new.value)
        except Exception:  # an __eq__ that raises, or an ambiguous truth value (arrays)
            return False
    a, b = old.value, new.value
    return type(a) is type(b) and getattr(a, "args", None) == getattr(b, "args", None)
