"""The job table of the query engine: claims, latches, the wait-for graph and the memos.

One table per database. Serial and threads use it in their own process; the processes backend
hosts one in its coordinator, where every worker asks it over IPC (design section 5). The table
runs no user code and never unpickles a value: on processes the memos it holds are the bytes
the clients packed, so the coordinator never imports the user's classes for values (keys it
must hash, so their classes must be importable there, as for any pickle).

A *runner* is one thread asking for queries, named by ``(pid, thread id)``. Its stack is the
jobs it has claimed and not yet published, innermost last; a runner that waits for another's
job records it, and the chain runner -> job waited for -> its owner -> ... is the wait-for graph
that :meth:`JobTable.claim` walks before it waits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from .errors import CycleError, WorkerCrashed

__all__ = [
    "ERROR",
    "ERROR_ONCE",
    "FALLBACK",
    "OK",
    "JobTable",
    "Memo",
    "QKey",
    "Runner",
    "canonical_cycle",
]

QKey = tuple[str, tuple[Any, ...]]  # (query name, key arguments)
Runner = tuple[int, int]  # (pid, thread id)

_SHARDS = 64  # claims on different keys rarely share a lock
_OWNER_CHECK = 0.5  # seconds between checks that a waited-for owner's process is alive

# Memo.state. ERROR_ONCE: an exception delivered to the caller and the waiters but not memoized
# (``cache_errors=False``, or an interrupted execution): nobody caches it.
OK, ERROR, FALLBACK, ERROR_ONCE = 0, 1, 2, 3


class Memo:
    """A finished query: its value (``OK``), exception (``ERROR``), or ``FALLBACK`` (it lay on
    a cycle: its value is the query's ``cycle=`` fallback, computed by whoever reads it), and
    the dependencies it read, in order."""

    __slots__ = ("deps", "state", "value")

    def __init__(self, state: int, value: Any, deps: tuple[QKey, ...] = ()) -> None:
        self.state = state
        self.value = value
        self.deps = deps

    def __reduce__(self) -> tuple[Any, ...]:
        return Memo, (self.state, self.value, self.deps)

    def __repr__(self) -> str:
        return f"Memo({('ok', 'error', 'fallback', 'error_once')[self.state]}, {self.value!r})"


def _sort_key(entry: QKey) -> tuple[str, str, str]:
    name, key = entry
    return name, type(key).__name__, repr(key)


def canonical_cycle(cycle: list[QKey]) -> list[tuple[str, Any]]:
    """The cycle rotated to start at its smallest entry: the same text on every backend."""
    start = min(range(len(cycle)), key=lambda i: _sort_key(cycle[i]))
    rotated = cycle[start:] + cycle[:start]
    return [(name, key[0] if len(key) == 1 else key) for name, key in rotated]


class _Counters:
    __slots__ = ("executions", "hits", "misses", "self_time", "total", "wait")

    def __init__(self) -> None:
        self.hits = self.misses = self.executions = 0
        self.total = self.self_time = self.wait = 0.0


class _RunnerState:
    """What the wait-for graph needs of one runner: only its own thread writes ``stack``, and
    others read it only while the runner waits (its stack is still then) under graph_lock."""

    __slots__ = ("ident", "stack", "waiting")

    def __init__(self, ident: Runner) -> None:
        self.ident = ident
        self.stack: list[_Job] = []
        self.waiting: _Job | None = None


class _Job:
    """A claimed (query, key): who executes it, and the latch its waiters sleep on."""

    __slots__ = ("latch", "outcome", "owner", "qkey", "resolution", "slot")

    def __init__(self, qkey: QKey, slot: Any, owner: _RunnerState) -> None:
        self.qkey = qkey
        self.slot = slot  # the job-table key: qkey, plus the process for local=True queries
        self.owner = owner
        self.latch = threading.Event()
        self.resolution: Memo | None = None  # set when a cycle through this job was resolved
        self.outcome: Memo | None = None  # what waiters get, set before the latch opens


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobTable:
    """Single-flight claims and memos of one database's queries (design section 5).

    *fallbacks* names every query and says whether it has a ``cycle=`` fallback. A query
    settled by its fallback gets a ``FALLBACK`` memo: each reader computes the value (the
    table runs no user code, and holds no lock while user code runs).
    """

    remote = False  # values stay objects: no packing to bytes

    def __init__(self, fallbacks: dict[str, bool]) -> None:
        self._fallbacks = dict(fallbacks)
        self.memos: dict[str, dict[Any, Memo]] = {name: {} for name in fallbacks}
        self._scoped: dict[Any, Memo] = {}  # local=True memos, per (name, key, pid)
        self._jobs: dict[Any, _Job] = {}
        self._locks = [threading.Lock() for _ in range(_SHARDS)]
        self._graph_lock = threading.Lock()  # taken only by a caller about to wait
        self._runners: dict[Runner, _RunnerState] = {}
        self._counters = {name: _Counters() for name in fallbacks}
        self._inputs: dict[tuple[str, Any], Any] = {}

    # -- claims --------------------------------------------------------------------------------

    def claim(
        self,
        name: str,
        key: tuple[Any, ...],
        runner: Runner,
        scope: Any = None,
        hits: Iterable[tuple[str, int]] = (),
    ) -> Any:
        """The memo of ``name(*key)``, or None: then *runner* has claimed it and must execute it
        and :meth:`publish` (or :meth:`abandon`) it.

        If another runner is executing it, wait for its outcome; if waiting would close a cycle
        in the wait-for graph, settle the cycle first (see :meth:`_settle`). *scope* keeps
        separate memos per scope (the processes backend's ``local=True`` queries, per process);
        *hits* are counts a client served from its own cache (sent along to save a round trip).
        """
        if hits:
            self.add_hits(hits)
        qkey = (name, key)
        slot = qkey if scope is None else (name, key, scope)
        memos = self.memos[name] if scope is None else self._scoped
        memo_key = key if scope is None else slot
        with self._locks[hash(slot) % _SHARDS]:
            memo = memos.get(memo_key)
            if memo is not None:
                self._counters[name].hits += 1
                return memo
            self._counters[name].misses += 1
            job = self._jobs.get(slot)
            if job is None:
                state = self._runners.get(runner)
                if state is None:
                    state = self._runners[runner] = _RunnerState(runner)
                job = self._jobs[slot] = _Job(qkey, slot, state)
                state.stack.append(job)
                return None
        return self._wait(job, runner)

    def publish(
        self,
        name: str,
        key: tuple[Any, ...],
        runner: Runner,
        memo: Memo,
        *,
        store: bool = True,
        elapsed: float = 0.0,
        self_time: float = 0.0,
        scope: Any = None,
    ) -> Memo | None:
        """Finish *runner*'s claim: memoize *memo* (unless ``store=False``: then only the
        waiters get it) and wake the waiters. Returns None, or the memo that overrides the
        caller's own (a cycle through this job was settled while its body ran)."""
        slot = (name, key) if scope is None else (name, key, scope)
        state = self._runners[runner]
        job = state.stack.pop()
        assert job.slot == slot, (job.slot, slot)
        if not state.stack and state.waiting is None:
            del self._runners[runner]
        with self._locks[hash(slot) % _SHARDS]:
            counters = self._counters[name]
            counters.executions += 1
            counters.total += elapsed
            counters.self_time += self_time
            override = job.resolution
            if override is not None:
                memo = override
            elif store:
                if scope is None:
                    self.memos[name][key] = memo
                else:
                    self._scoped[slot] = memo
            elif memo.state == ERROR:
                memo = Memo(ERROR_ONCE, memo.value, memo.deps)
            job.outcome = memo
            del self._jobs[slot]
        job.latch.set()
        return override

    def abandon(self, name: str, key: tuple[Any, ...], runner: Runner, scope: Any = None) -> None:
        """Give up *runner*'s claim without a result (the body was interrupted): waiters get
        :class:`~dualmode.WorkerCrashed`, nothing is memoized, the next caller executes it."""
        error = WorkerCrashed(f"query {name}{key!r} was interrupted while it ran; ask for it again")
        self.publish(name, key, runner, Memo(ERROR_ONCE, error), store=False, scope=scope)

    def add_hits(self, hits: Iterable[tuple[str, int]]) -> None:
        """Count hits that clients served from their own caches."""
        for name, n in hits:
            with self._locks[hash(name) % _SHARDS]:
                self._counters[name].hits += n

    def peek(self, name: str, key: tuple[Any, ...]) -> Memo | None:
        return self.memos[name].get(key)

    # In-process tables hand memos over as they are; the processes backend's client packs values
    # to bytes for the coordinator and unpacks them.

    def pack(self, memo: Memo, keep_value: bool = True) -> tuple[Memo, bool]:
        return memo, False

    def unpack(self, memo: Memo) -> Memo:
        return memo

    def pack_value(self, value: Any) -> Any:
        return value

    def unpack_value(self, value: Any) -> Any:
        return value

    # -- inputs --------------------------------------------------------------------------------

    def set_input(self, name: str, key: Any, value: Any) -> None:
        with self._locks[hash((name, key)) % _SHARDS]:
            self._inputs[(name, key)] = value

    def get_input(self, name: str, key: Any) -> tuple[bool, Any]:
        """``(True, value)`` of input *name* at *key* (packed, on processes), or ``(False,
        None)`` if it was never set."""
        try:
            return True, self._inputs[(name, key)]
        except KeyError:
            return False, None

    def stats(self) -> dict[str, tuple[int, int, int, float, float, float]]:
        """Per query: hits, misses, executions, total time, self time, wait time."""
        result = {}
        for name, c in self._counters.items():
            result[name] = (c.hits, c.misses, c.executions, c.total, c.self_time, c.wait)
        return result

    # -- waiting and cycles --------------------------------------------------------------------

    def _wait(self, job: _Job, runner: Runner) -> Memo:
        name = job.qkey[0]
        state: _RunnerState | None = None
        with self._graph_lock:
            if job.resolution is None:
                state = self._runners.get(runner)
                cycle = None if state is None else self._find_cycle(job, state)
                if cycle is not None:
                    self._settle(cycle)
                if job.resolution is None:
                    if job.owner is state:
                        # A fallback-less query on my own stack, on a cycle settled through a
                        # fallback: waiting for it would wait for myself. Unwind to it.
                        assert cycle is not None
                        error = CycleError(canonical_cycle([j.qkey for j in cycle]))
                        return Memo(ERROR, error)
                    if state is None:
                        state = self._runners[runner] = _RunnerState(runner)
                    state.waiting = job  # its chain reaches a running or settled job
        start = time.perf_counter()
        self._sleep(job)
        waited = time.perf_counter() - start
        with self._graph_lock:
            if state is not None:
                state.waiting = None
                if not state.stack and self._runners.get(runner) is state:
                    del self._runners[runner]
        with self._locks[hash(job.slot) % _SHARDS]:
            self._counters[name].wait += waited
        assert job.outcome is not None  # set before the latch opened
        return job.outcome

    def _sleep(self, job: _Job) -> None:
        """Wait for *job*'s latch; if its owner's process dies first, abandon it for them."""
        owner_pid = job.owner.ident[0]
        while not job.latch.wait(_OWNER_CHECK):
            if not _alive(owner_pid):
                self._abandon_dead(job)

    def _abandon_dead(self, job: _Job) -> None:
        name, key = job.qkey
        error = WorkerCrashed(
            f"the worker process (pid {job.owner.ident[0]}) executing query {name}{key!r} "
            "died; nothing was memoized, so asking again executes it again"
        )
        with self._locks[hash(job.slot) % _SHARDS]:
            if self._jobs.get(job.slot) is not job:
                return  # published meanwhile
            del self._jobs[job.slot]
            job.outcome = Memo(ERROR_ONCE, error)
        with self._graph_lock:
            self._runners.pop(job.owner.ident, None)
        job.latch.set()

    def _find_cycle(self, job: _Job, me: _RunnerState) -> list[_Job] | None:
        """The jobs on the cycle that waiting for *job* would close, or None (graph_lock held).

        Follows owner -> the job that owner waits for -> its owner... back to *me*. The cycle is
        my frames from the job that the chain reaches, then each owner's frames from the job
        waited for up to its newest, in dependency order.
        """
        segments: list[list[_Job]] = []
        current = job
        seen: set[int] = set()
        while True:
            if current.resolution is not None:
                return None  # settled: waiting for it ends at once
            owner = current.owner
            if owner is not me and owner.waiting is None:
                return None  # it is running, so the chain ends: no cycle
            frames = owner.stack  # mine, or a waiting owner's: still while graph_lock is held
            if current not in frames:
                return None  # its owner has not started it yet, or just finished it
            position = frames.index(current)
            if owner is me:
                return frames[position:] + [j for seg in segments for j in seg]
            segments.append(frames[position:])
            if id(owner) in seen:
                return None
            seen.add(id(owner))
            assert owner.waiting is not None
            current = owner.waiting

    def _settle(self, cycle: list[_Job]) -> None:
        """Settle a cycle now (graph_lock held), the same way whichever request closed it.

        If some queries on it have a ``cycle=`` fallback, those take their fallback values and
        the others are not poisoned: they go on and compute from them. Without any fallback,
        every query on the cycle gets the same CycleError. Settled jobs' waiters wake now; the
        bodies still running finish, and their own results are dropped for these.
        """
        error = CycleError(canonical_cycle([job.qkey for job in cycle]))
        with_fallback = [job for job in cycle if self._fallbacks[job.qkey[0]]]
        for job in with_fallback or cycle:
            memo = Memo(FALLBACK, None) if self._fallbacks[job.qkey[0]] else Memo(ERROR, error)
            with self._locks[hash(job.slot) % _SHARDS]:
                job.resolution = job.outcome = memo
                if job.slot == job.qkey:
                    self.memos[job.qkey[0]][job.qkey[1]] = memo
                else:
                    self._scoped[job.slot] = memo
            job.latch.set()
