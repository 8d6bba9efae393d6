"""Queries from async code: ``await db.q.async_get(key)``, for sync and async queries alike.

Where the work goes (``docs/queries.md#async-queries``):

- a memo still valid is returned at once, with no claim;
- where the job table is in this process (serial, threads), the task claims the key itself
  with a :class:`~dualmode.query.tasks.TaskState` (an id of its own in the wait-for graph), and
  waits for another owner on its event loop (``InProcessJobTable.async_claim``). As owner, it
  runs an async body on the running event loop (``execute.async_execute``) and hands a sync
  body to one of the backend's workers, which runs it under the task's id (serial: on this
  thread, as every serial call);
- on processes the whole call runs on a worker process (``dualmode.run_in_worker``), where a
  sync call runs an async body on a loop of its own (``tasks.run_body``); a ``local=True``
  query, on a thread of this process.

Inside an async body, ``async_get`` records the edge in the body's frame and claims with the
body's state, so re-validation, backdating and cycles work as for sync bodies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .execute import async_execute
from .hits import Frame, ThreadState, unhashable
from .job_table import Claim, InProcessJobTable
from .memo import Memo, MemoState
from .tasks import TaskState, here, in_body, swap
from .verify import _inputs_changed as inputs_changed

if TYPE_CHECKING:
    from .database import _QueryDescriptor
    from .runtime import Runtime

__all__ = ["async_get"]

OK, ERROR = MemoState.OK, MemoState.ERROR  # globals: see dualmode.query.job_table
MEMO, STALE = Claim.MEMO, Claim.STALE


async def async_get(rt: Runtime, name: str, key: tuple[Any, ...]) -> Any:
    """The value of ``name(*key)`` (or its exception raised), from async code: see the
    module's docstring and :meth:`BoundQuery.async_get <dualmode.BoundQuery.async_get>`."""
    try:
        hash(key)
    except TypeError:
        raise unhashable(name, key) from None
    inside = in_body(rt)
    state: ThreadState
    if inside is None:
        memo = rt.peek(name, key)
        if memo is None or (memo.state is not OK and memo.state is not ERROR):
            if not _in_process(rt):
                return await _on_worker(rt, name, key)
            if rt.home is not None:  # serial: a caller cancelled already starts nothing
                import anyio.lowlevel

                await anyio.lowlevel.checkpoint()
            state = TaskState(rt, here(rt), rt.revision)
            try:
                memo = await async_fetch(rt, name, key, state)
            finally:
                _retire(rt, state)
    else:
        state, recorder = inside
        recorder.stack[-1].deps.append((name, key))
        try:
            memo = await async_fetch(rt, name, key, state)
        finally:
            if state is not recorder:  # a task the body started: its own state
                _retire(rt, state)
    if memo.state is OK:
        return memo.value
    raise memo.value


def _retire(rt: Runtime, state: ThreadState) -> None:
    """A task's own state is done: its counts kept, the table's record of its id dropped."""
    rt.retire(state)
    if _in_process(rt):
        cast(InProcessJobTable, rt.table).forget(state.id)


def _in_process(rt: Runtime) -> bool:
    """Whether *rt*'s job table is in this process (tasks claim there themselves)."""
    return isinstance(rt.table, InProcessJobTable) and not rt.table.shared


async def async_fetch(rt: Runtime, name: str, key: tuple[Any, ...], state: ThreadState) -> Memo:
    """:meth:`Runtime.fetch` from async code, for *state* (a task's, or a sync caller's in
    its private loop)."""
    index = rt.index[name]
    memos = state.memos[index]
    memo = memos.get(key)
    if memo is not None:
        state.hits[index] += 1
        return memo
    memo = state.take_carried(index, key)
    if memo is not None:
        return memo
    while True:
        found = rt.fetch_hot(name, key, state, index)
        if found is None:
            found = await _fetch_cold(rt, name, key, state)
        if found is not None:
            return rt.keep(name, key, state, memos, found)
        memos = state.memos[index]  # a new revision: a new copy


async def _fetch_cold(
    rt: Runtime, name: str, key: tuple[Any, ...], state: ThreadState
) -> Memo | None:
    """:meth:`Runtime.fetch_cold` from async code: a table in this process is claimed from
    without blocking the loop; one elsewhere (a worker process's private loop, whose thread
    is this body's owner) with its blocking claim."""
    descriptor = rt.queries[name]
    table = rt.table
    scope = None
    if _in_process(rt):
        in_process = cast(InProcessJobTable, table)
        kind, answer = await in_process.async_claim(name, key, state.id, state.revision)
    else:
        scope = rt.scope if descriptor.local else None
        kind, answer = table.claim(name, key, state.id, state.revision, scope)
    if kind is MEMO:
        return answer  # type: ignore[no-any-return]
    if kind is STALE:
        rt.stale(state, answer)
        return None
    if descriptor.is_async:
        return await _async_update(rt, descriptor, key, state, scope, answer)
    return await _hand_over(rt, descriptor, key, state, scope, answer)


async def _async_update(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    state: ThreadState,
    scope: Any,
    old: Memo | None,
) -> Memo:
    """``Runtime._update`` of an async query claimed by *state*: verified, else its body run
    on this event loop. Cancelled (or anything but the body raising), the claim is abandoned:
    a waiter, or the next caller, computes it."""
    revision = state.revision
    frame = Frame()
    state.enter(frame)
    try:
        green = old is not None and not descriptor.volatile and not await _changed(rt, old, state)
        executed = None if green else await async_execute(rt, descriptor, key, state, frame)
    except BaseException:
        rt.give_up(descriptor.name, key, state, scope)
        raise
    state.leave()
    return rt.finish(descriptor, key, state, scope, old, executed, revision)


async def _changed(rt: Runtime, old: Memo, state: ThreadState) -> bool:
    """``verify.changed`` from async code: each query read is brought up to date without
    blocking the loop, in the order the body read them."""
    if old.deps is None:
        return True
    since = old.verified_at
    inputs: list[tuple[str, Any]] = []
    for name, key in old.deps:
        if name in rt.inputs:
            inputs.append((name, key[0]))
        elif (inputs and inputs_changed(rt, inputs, since, state)) or (
            await async_fetch(rt, name, (*key,), state)
        ).changed_at > since:
            return True
        else:
            inputs = []
    return bool(inputs) and inputs_changed(rt, inputs, since, state)


async def _hand_over(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    state: ThreadState,
    scope: Any,
    old: Memo | None,
) -> Memo:
    """Bring a sync query claimed by *state* up to date off the event loop: on a worker of
    the backend, under the task's id (serial: on this thread). A sync caller's private loop
    runs it on its own thread, which is the owner.

    Cancelled before the worker starts it, the claim is abandoned. Once it runs it finishes
    and is memoized; a task that owns queries below it waits for that (shielded) before the
    cancellation goes on, so they are given up in order."""
    if not isinstance(state, TaskState):
        return rt._update(descriptor, key, state, scope, old)
    if rt.home is not None:
        return _run_for(rt, descriptor, key, state.id, state.revision, old)
    import anyio

    from ..parking_lot import wait_done

    future = rt.db.backend.submit(_run_for, rt, descriptor, key, state.id, state.revision, old)
    try:
        await wait_done([future])
    except BaseException:
        if future.cancel():
            rt.table.abandon(descriptor.name, key, state.id, scope)
        elif state.stack:
            with anyio.CancelScope(shield=True):
                await wait_done([future])
        raise
    ok, value = future.result()
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _run_for(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    ident: tuple[int, int],
    revision: int,
    old: Memo | None,
) -> Memo:
    """On a worker: bring the sync query that task *ident* claimed up to date, under its id
    (so the wait-for graph sees the task and this thread as one chain) and in its revision."""
    state = TaskState(rt, here(rt), revision, ident)
    previous = swap(rt, state)
    try:
        return rt._update(descriptor, key, state, None, old)
    finally:
        swap(rt, previous)
        rt.retire(state)


async def _on_worker(rt: Runtime, name: str, key: tuple[Any, ...]) -> Any:
    """``name(*key)`` on a worker process (processes backend)."""
    if rt.queries[name].local:
        # Its value stays in the process that computes it, which must be this one.
        import anyio.to_thread

        return await anyio.to_thread.run_sync(_call_query, rt.db, name, key, abandon_on_cancel=True)
    from ..parallel import run_in_worker

    return await run_in_worker(_call_query, rt.db, name, key, backend=rt.db.backend)


def _call_query(db: Any, name: str, key: tuple[Any, ...]) -> Any:
    """``db.<name>(*key)`` on a worker (the database travels to a worker process as
    ``dualmode.query.shipping`` ships it)."""
    return getattr(db, name)(*key)
