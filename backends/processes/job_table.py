"""The client of a query database's job table hosted in the coordinator.

The coordinator hosts the query engine's :class:`~dualmode.query.job_table.InProcessJobTable`;
each process that has the database holds a :class:`JobTable`, its implementation of the
:class:`dualmode.query.job_table.JobTable` protocol (see "The query protocol" and "The
processes backend: one module per process role" in docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, cast

import cloudpickle  # type: ignore[import-untyped]

from dualmode.query.job_table import (
    Claim,
    HitCounts,
    InputCheck,
    InputState,
    TableStats,
    Verdict,
)
from dualmode.query.memo import LOW, Memo, MemoState, QKey, ThreadId, lookup

from .primitives import Hosted

__all__ = ["JobTable"]

OK, ERROR, ERROR_ONCE, RETRY = MemoState.OK, MemoState.ERROR, MemoState.ERROR_ONCE, MemoState.RETRY


class JobTable(Hosted):
    """A query database's job table, hosted in the coordinator, as one process uses it.

    Every process that has the database asks the same table: claims, waits (with the
    wait-for-graph cycle check, done in the coordinator) and memos are shared by all of them,
    so each (query, key) executes once in the whole process tree. Values and exceptions travel
    as cloudpickle bytes that only clients load: the coordinator never imports the user's
    value classes. This client keeps this process's cache of the memos it has executed or
    received (its :attr:`memos`), keeps ``local=True`` values here (the table holds a marker
    for them), and sends the calling thread's hits that the table has not counted along with
    each claim.
    """

    __slots__ = ("_memos", "_unreported")
    shared = True
    extra_exposed = (
        "abandon",
        "add_hits",
        "claim",
        "finish",
        "get_input",
        "input_changes",
        "peek",
        "set_input",
        "stats",
    )

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._ref.link.call(self._ref.ident, method, args, kwargs)

    # -- this process's side -------------------------------------------------------------------

    @property
    def memos(self) -> Mapping[str, dict[tuple[Any, ...], Memo]]:
        return self._memos

    @property
    def scope(self) -> Hashable:
        return os.getpid()

    def attach(self, queries: Iterable[str], unreported_hits: Callable[[], HitCounts]) -> None:
        self._memos: dict[str, dict[tuple[Any, ...], Memo]] = {name: {} for name in queries}
        self._unreported = unreported_hits

    def unchanged(self, qkey: QKey, memo: Memo, revision: int) -> bool:
        return False  # only the coordinator knows: ask it with a claim

    def _received(
        self, name: str, key: tuple[Any, ...], memo: Memo, scope: Hashable | None, old: bool
    ) -> Memo:
        """A memo from the coordinator as this process uses it: unpacked and cached here (an
        *old* one, to be verified, is not cached); for a ``local=True`` query, the marker the
        table holds turned into this process's value."""
        if scope is not None and memo.state is OK:
            mine = lookup(self._memos[name], key)
            if mine is None:
                if old:  # another process executed it: execute it again here
                    return memo.replace(state=RETRY, deps=None)
                # Cannot happen: a local=True memo is published only after it was cached here.
                raise RuntimeError(f"query {name}{key!r}: its local=True value is lost")
            return mine.replace(verified_at=memo.verified_at, changed_at=memo.changed_at)
        memo = _unpack(memo)
        if memo.state is not ERROR_ONCE and not old:
            self._memos[name][key] = memo
        return memo

    # -- the protocol ----------------------------------------------------------------------------

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        revision: int,
        scope: Hashable | None = None,
    ) -> tuple[Claim, Any]:
        kind, answer = self._call("claim", name, key, thread, revision, scope, self._unreported())
        if kind is Claim.MEMO or kind is Claim.VERIFY:
            answer = self._received(name, key, answer, scope, old=kind is Claim.VERIFY)
        return kind, answer

    def publish(
        self,
        name: str,
        key: tuple[Any, ...],
        thread: ThreadId,
        memo: Memo,
        *,
        store: bool = True,
        verdict: Verdict | None = Verdict.EXECUTED,
        elapsed: float = 0.0,
        self_time: float = 0.0,
        scope: Hashable | None = None,
    ) -> Memo:
        if verdict is Verdict.GREEN:
            if scope is None:
                self._memos[name][key] = memo
            shipped = memo.replace(value=None)  # the coordinator re-stamps the one it has
        else:
            if store and scope is not None:
                # The value stays here and the table gets a marker: threads of this process
                # that wait for it read it from here, so it is cached before it is published.
                self._memos[name][key] = memo
            shipped, failed = _pack(memo, keep_value=scope is None)
            if failed:  # the value cannot travel: this caller gets the same error as the others
                memo = _unpack(shipped)
        settlement = self._call(
            "finish",
            name,
            key,
            thread,
            shipped,
            store=store,
            verdict=verdict,
            elapsed=elapsed,
            self_time=self_time,
            scope=scope,
        )
        if settlement is not None:  # a cycle through this query was settled meanwhile
            return self._received(name, key, settlement, scope, old=False)
        if store and verdict is not Verdict.GREEN:
            self._memos[name][key] = memo
        return memo

    def abandon(
        self, name: str, key: tuple[Any, ...], thread: ThreadId, scope: Hashable | None = None
    ) -> None:
        self._call("abandon", name, key, thread, scope)

    def peek(
        self, name: str, key: tuple[Any, ...], revision: int, scope: Hashable | None = None
    ) -> Memo | None:
        memo = lookup(self._memos[name], key)
        if memo is not None and memo.verified_at == revision:
            return memo
        if scope is not None:  # a local=True value is here or nowhere
            return None
        memo = self._call("peek", name, key, revision)
        return None if memo is None else self._received(name, key, memo, None, old=False)

    def add_hits(self, hits: HitCounts) -> None:
        self._call("add_hits", hits)

    def stats(self) -> TableStats:
        return cast(TableStats, self._call("stats"))

    def set_input(self, name: str, key: Hashable, value: Any, durability: int = LOW) -> int:
        return cast(int, self._call("set_input", name, key, _pack_value(value), durability))

    def get_input(
        self, name: str, key: Hashable, revision: int
    ) -> tuple[InputState, Any, int, int]:
        state, value, changed_at, durability = self._call("get_input", name, key, revision)
        if state is InputState.SET:
            value = cloudpickle.loads(value)
        return state, value, changed_at, durability

    def input_changes(
        self, inputs: list[tuple[str, Hashable]], since: int, revision: int
    ) -> tuple[InputCheck, int]:
        return cast(tuple[InputCheck, int], self._call("input_changes", inputs, since, revision))


def _pack(memo: Memo, keep_value: bool = True) -> tuple[Memo, bool]:
    """*memo* with its value as bytes (or none, for a ``local=True`` value kept here), and
    whether packing failed: then the memo holds the TypeError that says why, for the caller
    as for everyone else."""
    if memo.state is OK and not keep_value:
        return memo.replace(value=None), False
    if memo.state not in (OK, ERROR, ERROR_ONCE):
        return memo, False
    try:
        return memo.replace(value=_pack_value(memo.value)), False
    except TypeError as exc:
        state = ERROR if memo.state is OK else memo.state
        return memo.replace(state=state, value=_pack_value(TypeError(str(exc)))), True


def _unpack(memo: Memo) -> Memo:
    if isinstance(memo.value, bytes) and memo.state in (OK, ERROR, ERROR_ONCE):
        return memo.replace(value=cloudpickle.loads(memo.value))
    return memo


def _pack_value(value: Any) -> bytes:
    try:
        return cast(bytes, cloudpickle.dumps(value))
    except Exception as exc:
        raise TypeError(
            f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled to the "
            f"coordinator that shares query results between processes ({type(exc).__name__}"
            f": {exc}); return picklable data, or mark the query local=True to keep its "
            "values in the process that computes them"
        ) from exc
