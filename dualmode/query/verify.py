"""Verify: whether anything an older revision's memo read has changed since (salsa's deep verify).

The step a claim's owner takes when the table answers VERIFY with the old memo (see
``dualmode.query.runtime`` and ``docs/architecture.md#the-query-protocol``). Its dependencies
are checked in the order the body read them, each query brought up to date first (so it may
execute), because a later read may only have happened because of an earlier one's value.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from .job_table import InputCheck
from .memo import Memo

if TYPE_CHECKING:
    from .hits import ThreadState
    from .runtime import Runtime

__all__ = ["changed"]

CHANGED, STALE = InputCheck.CHANGED, InputCheck.STALE  # see dualmode.query.job_table


def changed(rt: Runtime, old: Memo, thread: ThreadState) -> bool:
    """Whether a dependency of *old* changed after it was verified. Runs with the owner's
    frame pushed, so a new revision meanwhile raises Cancelled."""
    if old.deps is None:
        return True  # unknown (settled on a cycle before its body finished)
    since = old.verified_at
    inputs: list[tuple[str, Hashable]] = []
    for name, key in old.deps:
        if name in rt.inputs:
            inputs.append((name, key[0]))
            continue
        if inputs:  # consecutive input reads: one question to the table
            if _inputs_changed(rt, inputs, since, thread):
                return True
            inputs = []
        # A key of this thread's own: it is stored in this thread's dicts (see lookup()).
        if rt.fetch(name, (*key,), thread).changed_at > since:
            return True
    return bool(inputs) and _inputs_changed(rt, inputs, since, thread)


def _inputs_changed(
    rt: Runtime, inputs: list[tuple[str, Hashable]], since: int, thread: ThreadState
) -> bool:
    check, revision = rt.table.input_changes(inputs, since, thread.revision)
    if check is STALE:
        rt.stale(thread, revision)  # raises Cancelled: a frame is on the stack
    return check is CHANGED
