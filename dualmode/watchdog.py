"""The deadlock watchdog: callers blocked for good raise DeadlockError instead of hanging.

A backend started with ``watchdog=SECONDS`` gives itself one :class:`Watchdog`
(docs/guarantees.md#the-deadlock-watchdog). A caller that must block, with no timeout, on one
of its primitives (after the fast try-acquire failed: the uncontended path does nothing extra)
registers a :class:`WaitRecord` for its thread: what it waits for, since when, and how to wake
it. The watchdog's thread, started with the first record and ended within 50 ms of the moment
nothing blocks (or by the backend's ``close()``), scans every ``limit / 2`` seconds and builds
the wait-for graph from the records older than the limit: a thread points to the threads that
hold what it waits for (Lock, RLock, Mutex, RwLock writer and OnceCell initialiser record their
holder). It reports

- every cycle of that graph (rustc's deadlock handler; a thread re-taking a Lock it holds is a
  cycle of one), and
- where the backend asks for it (threads, not the processes coordinator, whose clients may
  still act), a *stall*: every thread of the process is blocked longer than the limit, so
  none can wake another; or every worker of a pool is (a pool whose every worker waits for an
  Event nobody sets), whatever the process's other threads do: they may be another library's
  or another backend's, idle for good.

A report must be seen in two scans in a row, made of the same records, so a wait that is being
granted as the watchdog looks (the holder recorded a moment late) is never reported. Each
blocked caller reported gets its own :class:`~dualmode.DeadlockError`, raised by its wait
after it left the primitive's queue having taken nothing. Waits with a timeout are not
watched: they end on their own.

The records are a dict keyed by thread: one set and one delete per blocking wait, no lock.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from typing import Any

from .errors import DeadlockError

__all__ = ["Awaited", "WaitRecord", "Watchdog", "creation_site", "sited"]

# How often the watchdog's thread looks whether anything still blocks, and ends if not: soon
# after the last wait, so that a program (or a test) that counts its threads finds it gone.
_IDLE_CHECK = 0.05

# Where dualmode's own code is: a primitive's creation site is the first frame outside it.
_inside: tuple[str, ...] | None = None
_sited = threading.local()  # .site: the creation site that a coordinator was told


def _dualmode_dirs() -> tuple[str, ...]:
    global _inside
    if _inside is None:
        dirs = {os.path.dirname(__file__)}
        spec = importlib.util.find_spec("dualmode.backends")
        if spec is not None and spec.origin is not None:  # backends/ sits apart when editable
            dirs.add(os.path.dirname(spec.origin))
        _inside = tuple(os.path.join(d, "") for d in dirs)
    return _inside


def creation_site() -> str:
    """``file:line`` of the user's code that is creating a primitive: the innermost frame
    outside dualmode (relative to the working directory when under it)."""
    site: str | None = getattr(_sited, "site", None)
    if site is not None:
        return site
    inside = _dualmode_dirs()
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(inside):
        frame = frame.f_back
    path = frame.f_code.co_filename
    with contextlib.suppress(ValueError):  # another drive (Windows)
        relative = os.path.relpath(path)
        if not relative.startswith(os.pardir):
            path = relative
    return f"{path}:{frame.f_lineno}"


@contextlib.contextmanager
def sited(site: str | None) -> Iterator[None]:
    """Primitives created in this thread meanwhile were created at *site* (a client's code,
    when the processes coordinator builds them for it); None: found from the frames."""
    _sited.site = site
    try:
        yield
    finally:
        _sited.site = None


class Awaited:
    """Something waited for that is not a primitive: described as *what*, held by the
    threads (idents) in *holders* (a query's owner, for a wait on its latch)."""

    __slots__ = ("_held_by", "what")

    def __init__(self, what: str, holders: tuple[object, ...] = ()) -> None:
        self.what = what
        self._held_by = holders

    def _holders(self) -> tuple[object, ...]:
        return self._held_by


class WaitRecord:
    """One thread blocked with no timeout: on what, since when, and how to wake it.

    *interrupt* (called by the watchdog after it set :attr:`error`) makes the wait raise that
    error if the caller is still waiting, and says whether it was (False: it was granted what
    it waited for meanwhile); None for a wait that is not itself to blame (a parallel call
    waiting for its tasks), which ends when they do.
    """

    __slots__ = ("error", "interrupt", "on", "since", "thread")

    def __init__(self, on: object, interrupt: Callable[[], bool] | None) -> None:
        self.thread = threading.get_ident()
        self.on = on
        self.since = time.monotonic()
        self.interrupt = interrupt
        self.error: DeadlockError | None = None


# What a report is about: a wait-for cycle, or a stall of the process's threads or of a pool's.
_CYCLE, _PROCESS, _POOL = "cycle", "process", "pool"


def thread_named(name: str) -> str:
    return f"thread {name!r}"


class Watchdog:
    """The watchdog of one backend in one process (see the module's docstring).

    *stalls*: also report every thread of the process blocked longer than the limit.
    *describe*: how a thread is named in a report, from its ``threading`` name (the processes
    coordinator's server threads are named after the client process and thread they serve).
    A worker pool tells it its idle workers (:meth:`idle_threads`), which the stall rule does
    not count: they wait for work, not for each other.
    """

    def __init__(
        self,
        limit: float,
        *,
        stalls: bool = True,
        describe: Callable[[str], str] = thread_named,
    ) -> None:
        self.limit = limit
        self._stalls = stalls
        self._describe = describe
        self._records: dict[int, WaitRecord] = {}
        self._origins: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
        self._idle: list[Callable[[], Collection[int]]] = []
        self._pools: list[tuple[Callable[[], Collection[int]], object]] = []
        self._seen: set[frozenset[WaitRecord]] = set()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._leaving: threading.Thread | None = None  # the last one that ended while idle
        self._stop = threading.Event()

    # -- what the primitives tell it -------------------------------------------------------

    def created(self, obj: object, kind: str | None = None) -> None:
        """Remember *obj*'s kind (its class name unless given) and creation site."""
        self._origins[obj] = (kind or type(obj).__name__, creation_site())

    def idle_threads(self, idle: Callable[[], Collection[int]]) -> None:
        """Add a source of idle threads for the stall rule (a worker pool's)."""
        self._idle.append(idle)

    def pool_threads(self, workers: Callable[[], Collection[int]], tasks: object) -> None:
        """Add a worker pool (its threads, none before it starts) for the stall rule: every
        one of them blocked longer than the limit is a stall, reported with the callers that
        wait for *tasks* (what a wait for the pool's tasks is recorded as waiting for)."""
        self._pools.append((workers, tasks))

    def waiting(self, on: object, interrupt: Callable[[], bool] | None) -> WaitRecord:
        """Record that this thread blocks on *on* from now, with no timeout; call
        :meth:`done` when the wait ends (in a ``finally``), then raise ``record.error`` if
        the wait was interrupted."""
        record = WaitRecord(on, interrupt)
        self._records[record.thread] = record
        if self._thread is None:
            self._start()
        return record

    def done(self, record: WaitRecord) -> None:
        if self._records.get(record.thread) is record:
            del self._records[record.thread]

    # -- its thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="dualmode-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = self.limit / 2
        next_scan = time.monotonic() + period
        while not self._stop.wait(min(_IDLE_CHECK, max(next_scan - time.monotonic(), 0))):
            if time.monotonic() >= next_scan:
                self.scan()
                next_scan += period
            if not self._records.copy():
                # Nothing blocks: end, and let the next wait start a new thread. A wait
                # recorded as this thread leaves finds no thread (its write to the dict comes
                # after the check, so its read of _thread after this write), or is seen here.
                with self._start_lock:
                    self._thread = None
                    self._leaving = threading.current_thread()
                if self._records.copy():
                    self._start()
                return

    def close(self) -> None:
        """Stop the watchdog's thread (if it started) and wait for it. Idempotent."""
        with self._start_lock:
            self._stop.set()
            threads = (self._thread, self._leaving)
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    # -- finding deadlocks --------------------------------------------------------------------

    def scan(self) -> None:
        """Look once: report what was found in this scan and the one before."""
        now = time.monotonic()
        stuck = {
            thread: record
            for thread, record in self._records.copy().items()
            if now - record.since >= self.limit
        }
        found = [(cycle, _CYCLE) for cycle in self._cycles(stuck)]
        if not found and self._stalls:
            found.extend(self._stalls_among(stuck))
        keys = {frozenset(records) for records, _ in found}
        for records, kind in found:
            if frozenset(records) in self._seen:
                self._report(records, kind)
        self._seen = keys

    def _holders(self, on: object) -> tuple[object, ...]:
        holders: Callable[[], tuple[object, ...]] | None = getattr(on, "_holders", None)
        return () if holders is None else holders()

    def _cycles(self, stuck: dict[int, WaitRecord]) -> list[list[WaitRecord]]:
        """The cycles of the wait-for graph among *stuck* threads, each once."""
        cycles: list[list[WaitRecord]] = []
        visited: set[int] = set()
        for start in stuck:
            path: list[int] = []
            thread: object = start
            while isinstance(thread, int) and thread in stuck and thread not in visited:
                visited.add(thread)
                path.append(thread)
                thread = next((h for h in self._holders(stuck[thread].on) if h in stuck), None)
            if thread in path:
                cycles.append([stuck[t] for t in path[path.index(thread) :]])
        return cycles

    def _stalls_among(self, stuck: dict[int, WaitRecord]) -> list[tuple[list[WaitRecord], str]]:
        """The stalls: the whole process, else each pool whose every worker is *stuck*, with
        one of them that can be woken."""
        if self._all_blocked(stuck):
            return [(list(stuck.values()), _PROCESS)]
        stalls = []
        for source, tasks in self._pools:
            workers = set(source())
            if workers and workers <= stuck.keys():
                records = [stuck[t] for t in workers]
                if any(record.interrupt is not None for record in records):
                    callers = [r for t, r in stuck.items() if r.on is tasks and t not in workers]
                    stalls.append((records + callers, _POOL))
        return stalls

    def _all_blocked(self, stuck: dict[int, WaitRecord]) -> bool:
        """Whether every thread of the process but this one and the idle is stuck, and one
        of them can be woken."""
        if not any(record.interrupt is not None for record in stuck.values()):
            return False
        idle = set(itertools.chain.from_iterable(source() for source in self._idle))
        me = threading.get_ident()
        return all(
            t.ident in stuck or t.ident in idle or t.ident == me for t in threading.enumerate()
        )

    def _report(self, records: list[WaitRecord], kind: str) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        waits = [self._line(record, names) for record in records]
        is_cycle = kind is _CYCLE
        if is_cycle:  # rotated to start at its smallest line: one message whoever closed it
            first = waits.index(min(waits))
            waits = waits[first:] + waits[:first]
        limit = f"{self.limit:g} s"
        if is_cycle:
            head = (
                f"deadlock: {len(records)} blocked callers wait for each other, each for "
                f"over {limit} (dualmode watchdog):"
                if len(records) > 1
                else f"deadlock: a caller waits for itself, for over {limit} (dualmode watchdog):"
            )
            advice = (
                "each blocked caller above raises DeadlockError and takes nothing: take locks "
                "in one global order, or use a timeout"
            )
        else:
            who = "thread of this process" if kind is _PROCESS else "worker of the pool"
            head = (
                f"deadlock: every {who} has been blocked for over {limit}, so none can wake "
                "another (dualmode watchdog):"
            )
            advice = (
                "each waiting caller above raises DeadlockError and takes nothing: something "
                "that should set, notify or release what they wait for never ran"
            )
        message = "\n  ".join([head, *waits]) + "\n" + advice
        for record in records:
            if record.interrupt is None:
                continue
            record.error = DeadlockError(message, waits)
            record.interrupt()

    def _line(self, record: WaitRecord, names: dict[int | None, str]) -> str:
        who = self._who(record.thread, names)
        on = record.on
        if isinstance(on, str):
            return f"{who} waits for {on}"
        if isinstance(on, Awaited):
            line = f"{who} waits for {on.what}"
        else:
            kind, site = self._origins.get(on, (type(on).__name__, "an unknown site"))
            line = f"{who} waits for {kind} (created at {site})"
        holders = self._holders(on)
        if holders:
            line += ", held by " + " and ".join(self._who(h, names) for h in holders)
        return line

    def _who(self, holder: object, names: dict[int | None, str]) -> str:
        if isinstance(holder, int):
            name = names.get(holder)
            return self._describe(name) if name is not None else f"thread {holder} (ended)"
        get_name = getattr(holder, "get_name", None)  # an asyncio task
        if get_name is not None:
            return f"task {get_name()!r}"
        name = getattr(holder, "name", None)  # a trio task
        return f"task {name!r}" if isinstance(name, str) else f"task {holder!r}"
