"""Queries from async code: ``await db.q.async_get(key)``, for sync and async queries alike.

Where the work goes (``docs/queries.md#async-queries``):

- a memo still valid is returned at once, with no claim;
- where the job table is in this process (serial, threads), the task claims the key itself
  with a :class:`~dualmode.query.tasks.TaskState` (an id of its own in the wait-for graph), and
  waits for another owner on its event loop (``InProcessJobTable.async_claim``). As owner, it
  runs an async body on the running event loop (``execute.async_execute``) and hands a sync
  body to one of the backend's workers, which runs it under the task's id (serial: on this
  thread, as every serial call). A thread about to wait for that body in the job table runs
  it itself if no worker has started it (:class:`_HandOver`);
- on processes the whole call runs on a worker process (``dualmode.run_in_worker``), where a
  sync call runs an async body on a loop of its own (``tasks.run_body``); a ``local=True``
  query, on a thread of this process.

Inside an async body, ``async_get`` records the edge in the body's frame and claims with the
body's state, so re-validation, backdating and cycles work as for sync bodies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

from ..errors import Cancelled
from .execute import async_execute
from .hits import Frame, ThreadState, unhashable
from .job_table import Claim, InProcessJobTable
from .memo import Memo, MemoState
from .tasks import TaskState, here, in_body, loop_here, on_private_loop, swap
from .verify import _inputs_changed as inputs_changed

if TYPE_CHECKING:
    from .database import _QueryDescriptor
    from .runtime import Runtime

__all__ = ["async_get"]

# globals: see job_table
OK, ERROR, EVICTED, RERUN = MemoState.OK, MemoState.ERROR, MemoState.EVICTED, MemoState.RERUN
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
            if found.state is RERUN and rt.queries[name].is_async:
                return await _async_rerun(rt, rt.queries[name], key, state, found.value)
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
    hand_over = None
    if _in_process(rt):
        private = on_private_loop()
        handing = not (descriptor.is_async or private) and rt.home is None
        if handing and isinstance(state, TaskState):
            hand_over = _HandOver(rt, descriptor, key, state)  # before the claim: see _HandOver
        # A private loop's thread may be a worker that the body it waits for needs.
        helper = _to_thread if private else None
        in_process = cast(InProcessJobTable, table)
        kind, answer = await in_process.async_claim(
            name, key, state.id, state.revision, hand_over, helper
        )
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
    if hand_over is not None:
        return await _hand_over(rt, hand_over, state, answer)
    if not isinstance(state, TaskState):  # a sync caller's private loop: its thread is the owner
        return rt._update(descriptor, key, state, scope, answer)
    # Serial (the loop's thread is the database's), or a private loop (its thread blocks
    # anyway, and a worker busy with it could not run it): here, under the task's id.
    return _run_for(rt, descriptor, key, state.id, state.revision, answer, scope)


async def _async_rerun(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    state: ThreadState,
    old: Memo | None,
) -> Memo:
    """``Runtime.rerun`` of an async query: *old* verified, else its body run on this event
    loop, unclaimed; kept nowhere."""
    frame = Frame()
    state.enter(frame)
    try:
        if (
            old is not None
            and old.state is not EVICTED
            and not descriptor.volatile
            and not await _changed(rt, old, state)
        ):
            return old.verified(state.revision)
        memo, _, _ = await async_execute(rt, descriptor, key, state, frame)
    finally:
        state.leave()
    return memo


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
        executed = (
            None
            if green and old is not None and old.state is not EVICTED
            else await async_execute(rt, descriptor, key, state, frame)
        )
    except BaseException:
        rt.give_up(descriptor.name, key, state, scope)
        raise
    state.leave()
    return rt.finish(descriptor, key, state, scope, old, executed, revision, green)


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


class _HandOver:
    """A sync body claimed by a task, for a thread to run under the task's id: the worker of
    the backend it is queued for, or a thread about to wait for it in the job table, whichever
    comes first (:meth:`take_over`). When every worker waits for it, the queue would never
    reach it (docs/queries.md#async-queries). ``future`` gets the memo (or what it raised);
    cancelled before either starts it, nothing runs."""

    __slots__ = ("_lock", "_taken", "descriptor", "future", "ident", "key", "revision", "rt")

    def __init__(
        self, rt: Runtime, descriptor: _QueryDescriptor[Any], key: tuple[Any, ...], state: TaskState
    ) -> None:
        self.rt = rt
        self.descriptor = descriptor
        self.key = key
        self.ident = state.id
        self.revision = state.revision
        self._lock = threading.Lock()
        self._taken = False
        self.future: Future[Memo] = Future()

    @property
    def pending(self) -> bool:
        return not self._taken and not self.future.cancelled()

    def _take(self) -> bool:
        """Whether the caller runs it: the first to ask, unless the task cancelled it."""
        with self._lock:
            if self._taken:
                return False
            self._taken = True
        return self.future.set_running_or_notify_cancel()

    def run(self, old: Memo | None) -> None:
        """The worker's call: run it unless a waiter has, or it was cancelled."""
        if self._take():
            self._run(old, waiter=False)

    def take_over(self, old: Memo | None) -> bool:
        """See :meth:`HandOver.take_over <dualmode.query.job_table.HandOver.take_over>`. Not
        on a thread whose event loop runs (a sync body must not run there), private or not
        (its calls of async queries would fail there, not on a worker)."""
        if loop_here() or not self._take():
            return False
        self._run(old, waiter=True)
        return True

    def _run(self, old: Memo | None, waiter: bool) -> None:
        try:
            memo = _run_for(self.rt, self.descriptor, self.key, self.ident, self.revision, old)
        except BaseException as exc:
            self.future.set_exception(exc)  # the task re-raises it
            # A waiter goes on to its own claim, whose revision may be newer than the task's.
            if waiter and not isinstance(exc, Cancelled):
                raise
        else:
            self.future.set_result(memo)


async def _to_thread(fn: Callable[[Memo | None], bool], old: Memo | None) -> bool:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, old)


async def _hand_over(
    rt: Runtime, hand_over: _HandOver, state: ThreadState, old: Memo | None
) -> Memo:
    """Bring a sync query claimed by task *state* up to date off the event loop: queued for
    a worker of the backend, which runs it under the task's id, unless a thread waiting for
    it takes it over first.

    Cancelled before either starts it, the claim is abandoned. Once it runs it finishes and
    is memoized; a task that owns queries below it waits for that (shielded) before the
    cancellation goes on, so they are given up in order."""
    import anyio

    from ..parking_lot import wait_done

    rt.db.backend.submit(hand_over.run, old)
    future = hand_over.future
    try:
        await wait_done([future])
    except BaseException:
        if future.cancel():
            rt.table.abandon(hand_over.descriptor.name, hand_over.key, state.id)
        elif state.stack:
            with anyio.CancelScope(shield=True):
                await wait_done([future])
        raise
    return future.result()


def _run_for(
    rt: Runtime,
    descriptor: _QueryDescriptor[Any],
    key: tuple[Any, ...],
    ident: tuple[int, int],
    revision: int,
    old: Memo | None,
    scope: Any = None,
) -> Memo:
    """On a worker (or a thread that took it over): bring the sync query that task *ident*
    claimed up to date, under its id (so the wait-for graph sees the task and this thread as
    one chain) and in its revision."""
    state = TaskState(rt, here(rt), revision, ident)
    previous = swap(rt, state)
    try:
        return rt._update(descriptor, key, state, scope, old)
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
