"""The primitives' rule family: one rule set per primitive, each rule one operation.

Each rule set (``LockRules`` ... ``QueueRules``) is a mixin of
:class:`~dualmode.testing.ConformanceMachine` named after its primitive; each rule is named
after the operation it checks (``lock_acquire``, ``queue_get``...) and its docstring states
what every backend must observe. Only operations that give the same result everywhere *from
one thread* are made: non-blocking calls, 1 ms timeouts (which fail at once on serial and after
1 ms on a parallel backend), and blocking calls only where the machine's model of the object
(``Instance.state``) says they cannot wait (a free Lock, a non-empty Queue). A blocking call
that could wait is never made: serial raises BorrowError there, where a parallel backend would
hang. See docs/architecture.md#the-conformance-kit and, for each primitive's contract,
docs/primitives.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import Bundle, MultipleResults, multiple, rule

from .. import primitives as p
from .machine import (
    ACQUIRE_ARGS,
    ASYNC_ACQUIRE_ARGS,
    EVENT_LOOPS,
    TINY,
    ConformanceMachine,
    Instance,
    in_task,
    leaves,
    returning,
)
from .observation import as_dict, opaque

__all__ = [
    "PRIMITIVE_RULES",
    "AtomicIntRules",
    "BarrierRules",
    "ConditionRules",
    "EventRules",
    "FreezeLockRules",
    "LockRules",
    "MutexRules",
    "OnceCellRules",
    "PrimitiveConformance",
    "QueueRules",
    "RLockRules",
    "RwLockRules",
    "SemaphoreRules",
    "ShardedDictRules",
    "WorkerLocalRules",
]

# -- strategies -------------------------------------------------------------------------------

_QUEUE_ARGS: dict[str, dict[str, Any]] = {
    "nowait": {"block": False},
    "timeout": {"timeout": TINY},
    "block": {},
    "bad-args": {"timeout": -1},
}
_ACQUIRE = st.sampled_from(list(ACQUIRE_ARGS))
_ASYNC_ACQUIRE = st.sampled_from(list(ASYNC_ACQUIRE_ARGS))
# The event loop an async twin is awaited on: each async rule draws one per step.
_LOOPS = st.sampled_from(EVENT_LOOPS)
_QUEUE_MODE = st.sampled_from(list(_QUEUE_ARGS))
_INTS = st.integers(-8, 8) | st.sampled_from([2**31, 2**63 - 1, -(2**63), 2**64])
# picklable (the processes backend ships them), hashable, no NaN; 1, 1.0 and True are one key
_KEYS = st.sampled_from([0, 1, 2, 1.0, True, "a", "b", None, ("t", 1)])
_VALUES = st.integers(-3, 3) | st.sampled_from(["x", "", None, ("t", 1), 1.5, False])


class _Planned(Exception):
    """Raised on purpose by a OnceCell initialiser or a Barrier action (picklable)."""


def _fail() -> None:
    raise _Planned("barrier action")


async def _held_in_block(lock: p.Lock) -> tuple[bool, bool]:
    """``async with lock:``: whether it was held inside the block, and after it."""
    async with lock:
        inside = lock.locked()
    return inside, lock.locked()


async def _try_rlock(rlock: p.RLock, timeout: float) -> bool:
    """In one task: ``await async_acquire(timeout)``, and if it got the lock, release it."""
    got = await rlock.async_acquire(timeout=timeout)
    if got:
        rlock.release()
    return got


async def _wait_in_task(cond: p.Condition, how: str, result: Any) -> Any:
    """In one task: take the Condition's lock (1 ms at most: "busy" if held elsewhere), then
    ``async_wait(TINY)`` or ``async_wait_for(returning(result), TINY)``, then let go."""
    if not await cond.async_acquire(timeout=TINY):
        return "busy"
    try:
        if how == "wait":
            return await cond.async_wait(timeout=TINY)
        return await cond.async_wait_for(returning(result), timeout=TINY)
    finally:
        cond.release()


async def _async_write(fl: p.FreezeLock, value: Any) -> Any:
    """In one task: ``async with fl.async_write(TINY) as g: g.value = value``; the value
    read back after the block."""
    async with fl.async_write(timeout=TINY) as guard:
        guard.value = value
    return await fl.async_read(timeout=TINY)


async def _async_value(value: Any) -> Any:
    return value


async def _rwlock_block(rw: p.RwLock, how: str, timeout: float | None) -> None:
    """``async with rw.async_read(timeout):`` (or ``async_write``) around an empty block."""
    async with getattr(rw, f"async_{how}")(timeout):
        pass


# A Barrier's action: none, one that returns, one that raises (it runs in the coordinator on
# the processes backend, so it must pickle).
_BARRIER_ACTIONS: dict[str, Callable[[], object] | None] = {
    "none": None,
    "returns": returning(1),
    "raises": _fail,
}


# -- one rule set per primitive ----------------------------------------------------------------


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

    @rule(lock=locks, loop=_LOOPS, how=_ASYNC_ACQUIRE)
    def lock_async_acquire(self, lock: Instance, loop: str, how: str) -> None:
        """``await async_acquire(timeout)`` from a task: what ``acquire`` answers from a
        thread (True if free; False at once, or after the timeout, if held); ValueError for
        a negative timeout."""
        self.async_acquire(lock, loop, how, may_block=not self.call(lock, "locked").value)

    @rule(lock=locks, loop=_LOOPS)
    def lock_async_with(self, lock: Instance, loop: str) -> None:
        """``async with lock:`` from a task: held inside the block, released after it. (Only
        on a free lock: a held one would make serial raise BorrowError where a parallel
        backend waits forever.)"""
        if not self.call(lock, "locked").value:
            self.each(lock, f"async with (on {loop})", lambda o: in_task(loop, _held_in_block, o))

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

    @rule(rlock=rlocks, loop=_LOOPS)
    def rlock_async_acquire(self, rlock: Instance, loop: str) -> None:
        """``await async_acquire(TINY)`` from a task (released again in that task): True if
        free; False while the thread holds it, since a task is an owner of its own."""
        self.each(
            rlock, f"async_acquire({TINY}) on {loop}", lambda o: in_task(loop, _try_rlock, o, TINY)
        )


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
        self.call(cond, "wait_for", returning(result), timeout=TINY)

    @rule(cond=conditions, n=st.integers(0, 2))
    def condition_notify(self, cond: Instance, n: int) -> None:
        """``notify(n)``: None with the lock held (nobody waits); RuntimeError without it."""
        self.call(cond, "notify", n)

    @rule(cond=conditions)
    def condition_notify_all(self, cond: Instance) -> None:
        """``notify_all``: as ``notify``."""
        self.call(cond, "notify_all")

    @rule(
        cond=conditions,
        loop=_LOOPS,
        how=st.sampled_from(["wait", "wait_for"]),
        result=_VALUES,
    )
    def condition_async_wait(self, cond: Instance, loop: str, how: str, result: Any) -> None:
        """From a task that takes the lock (1 ms): ``async_wait(TINY)``, False with nobody to
        notify; ``async_wait_for(predicate, TINY)``, the predicate's last value; "busy"
        while the thread holds the lock (a task is an owner of its own)."""
        self.each(
            cond,
            f"async_{how}() on {loop}",
            lambda o: in_task(loop, _wait_in_task, o, how, result),
        )


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

    @rule(sem=semaphores, loop=_LOOPS, how=_ASYNC_ACQUIRE)
    def semaphore_async_acquire(self, sem: Instance, loop: str, how: str) -> None:
        """``await async_acquire(timeout)`` from a task: True and one unit fewer if any is
        free, else False; ValueError for a negative timeout."""
        if self.async_acquire(sem, loop, how, may_block=sem.state["value"] > 0):
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

    @rule(event=events, loop=_LOOPS, timeout=st.sampled_from([None, 0, TINY, -1]))
    def event_async_wait(self, event: Instance, loop: str, timeout: float | None) -> None:
        """``await async_wait(timeout)`` from a task: True if set; False after the timeout;
        ValueError for a negative one. No timeout only when set, as for ``wait``."""
        if timeout is None and not self.call(event, "is_set").value:
            timeout = TINY
        self.call_async(event, loop, "async_wait", timeout=timeout)


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
        self.call(barrier, "wait", timeout=self._timeout(barrier, timeout))

    @rule(barrier=barriers, loop=_LOOPS, timeout=st.sampled_from([None, TINY]))
    def barrier_async_wait(self, barrier: Instance, loop: str, timeout: float | None) -> None:
        """``await async_wait(timeout)`` from a task: what ``wait`` answers from a thread."""
        self.call_async(barrier, loop, "async_wait", timeout=self._timeout(barrier, timeout))

    def _timeout(self, barrier: Instance, timeout: float | None) -> float | None:
        """*timeout*, or 1 ms where no timeout at all could wait forever."""
        state = barrier.state
        if (
            timeout is None
            and state["timeout"] is None
            and state["parties"] > 1
            and not self.read(barrier, "broken")
        ):
            return TINY
        return timeout

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

    @rule(rw=rwlocks, loop=_LOOPS, how=st.sampled_from(["read", "write"]), wait=st.booleans())
    def rwlock_async_hold(self, rw: Instance, loop: str, how: str, wait: bool) -> None:
        """``async with async_read(timeout)`` / ``async_write(timeout)`` from a task, around
        an empty block: entered if the lock can be had (a read unless a write is held, a
        write if nothing is), else TimeoutError after the timeout. No timeout (*wait*) only
        where it can be had at once."""
        free = rw.state["writes"] == 0 and (how == "read" or rw.state["reads"] == 0)
        timeout = None if wait and free else TINY
        self.each(
            rw,
            f"async with async_{how}({timeout!r}) (on {loop})",
            lambda o: in_task(loop, _rwlock_block, o, how, timeout),
        )


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
        outcomes = self.each(mutex, f"{method}()", lambda m: getattr(m, method)(), opaque)
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

    @rule(target=mutex_guards, mutex=mutexes, loop=_LOOPS, wait=st.booleans())
    def mutex_async_lock(
        self, mutex: Instance, loop: str, wait: bool
    ) -> Instance | MultipleResults[Instance]:
        """``await async_lock(timeout)`` from a task: a guard when unlocked; TimeoutError
        while a guard lives (after the timeout). No timeout (*wait*) only when unlocked."""
        timeout = None if wait and not mutex.state["locked"] else TINY
        outcomes = self.each(
            mutex,
            f"async_lock({timeout!r}) awaited on {loop}",
            lambda m: in_task(loop, m.async_lock, timeout),
            opaque,
        )
        if not outcomes[0].ok:
            return multiple()
        mutex.state["locked"] = True
        return self.twins("MutexGuard", outcomes, mutex=mutex)

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
        outcomes = self.each(fl, "write()", lambda f: f.write(), opaque)
        if not outcomes[0].ok:
            return multiple()
        fl.state["writing"] = True
        return self.twins("WriteGuard", outcomes, lock=fl)

    @rule(fl=freeze_locks, loop=_LOOPS)
    def freeze_lock_async_read(self, fl: Instance, loop: str) -> None:
        """``await async_read(TINY)`` from a task: the value; TimeoutError while the thread's
        write guard lives."""
        self.call_async(fl, loop, "async_read", timeout=TINY)

    @rule(fl=freeze_locks, loop=_LOOPS, value=_VALUES)
    def freeze_lock_async_write(self, fl: Instance, loop: str, value: Any) -> None:
        """``async with async_write(TINY) as g: g.value = v`` from a task, then the value read
        back: *v*; BorrowError once frozen; TimeoutError while the thread's write guard
        lives."""
        self.each(
            fl,
            f"async_write() <- {value!r} on {loop}",
            lambda o: in_task(loop, _async_write, o, value),
        )

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
                    return obj.get_or_init(returning(value))
                if init == "set_inside":
                    return (obj.set(value), value)
                if init == "get_inside":
                    return (obj.get("default"), value)
                return value

            return fn

        self.each(
            cell, f"get_or_init(<fn: {init} {value!r}>)", lambda c: c.get_or_init(initialiser(c))
        )

    @rule(cell=once_cells, loop=_LOOPS, value=_VALUES, is_async=st.booleans())
    def once_cell_async_get_or_init(
        self, cell: Instance, loop: str, value: Any, is_async: bool
    ) -> None:
        """``await async_get_or_init(fn)`` from a task, *fn* sync or ``async def``: the
        stored value, else what *fn* gives (awaited), now stored."""
        init: Callable[[], Any] = (
            functools.partial(_async_value, value) if is_async else returning(value)
        )
        self.each(
            cell,
            f"async_get_or_init(<{'async ' if is_async else ''}fn: {value!r}>) on {loop}",
            lambda c: in_task(loop, c.async_get_or_init, init),
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
        return self.build(p.WorkerLocal, returning(value) if callable_factory else value)

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
        self.call(d, "get_or_insert_with", key, returning(value))

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
        self.each(d, "items()", lambda obj: obj.items(), as_dict)


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

    @rule(q=queues, loop=_LOOPS, item=_VALUES, wait=st.booleans())
    def queue_async_put(self, q: Instance, loop: str, item: Any, wait: bool) -> None:
        """``await async_put(item, timeout)`` from a task: what ``put`` answers from a
        thread. No timeout (*wait*) only where it cannot wait (room, or shut down)."""
        may_block = q.state["shut"] or not self.call(q, "full").value
        timeout = None if wait and may_block else TINY
        if self.call_async(q, loop, "async_put", item, timeout=timeout).ok and (
            q.state["unfinished"] is not None
        ):
            q.state["unfinished"] += 1

    @rule(q=queues, loop=_LOOPS, wait=st.booleans())
    def queue_async_get(self, q: Instance, loop: str, wait: bool) -> None:
        """``await async_get(timeout)`` from a task: what ``get`` answers from a thread. No
        timeout (*wait*) only where it cannot wait (an item, or shut down)."""
        may_block = q.state["shut"] or self.call(q, "qsize").value > 0
        self.call_async(q, loop, "async_get", timeout=None if wait and may_block else TINY)

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


#: Every primitive's rule set, in the order of docs/primitives.md's table.
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


class PrimitiveConformance(*leaves(PRIMITIVE_RULES)):  # type: ignore[misc]
    """Every primitive's rules in one machine (not runnable until given backends)."""
