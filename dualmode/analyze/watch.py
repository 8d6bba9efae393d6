"""``--watch``: re-analyze whenever a file under the PATHs changes.

The watching runs on an event loop (anyio): watchfiles' ``awatch`` where it is installed,
else a poll of the files' modification times. Each batch of changes is read into the
database's inputs and re-analyzed on the database's backend (in a worker thread of the loop
on a parallel backend, so the loop stays free); only the changed files' queries execute
again. What changed in the findings is printed as ``+``/``-`` lines. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.to_thread

from .files import SourceTree, describe_read_error, discover, read_source
from .findings import changes
from .queries import LAYOUT, Analysis
from .report import Report

__all__ = ["watch"]

Snapshot = dict[str, tuple[int, int]]  # path: (mtime in ns, size)


def _snapshot(tree: SourceTree) -> Snapshot:
    """The files of *tree* as they stand: what a poll compares."""
    found: Snapshot = {}
    for f in tree.files:
        try:
            info = os.stat(f.path)
        except OSError:
            continue
        found[f.path] = (info.st_mtime_ns, info.st_size)
    return found


async def _poll(seconds: float) -> AsyncIterator[None]:
    """Wake every *seconds*: the caller compares snapshots."""
    while True:
        await anyio.sleep(seconds)
        yield None


async def _watchfiles(paths: Sequence[str]) -> AsyncIterator[None]:
    import watchfiles

    async for _ in watchfiles.awatch(*paths, debounce=50, step=20):
        yield None


def _has_watchfiles() -> bool:
    return importlib.util.find_spec("watchfiles") is not None


def _print(text: str) -> None:
    print(text, flush=True)


def _update(db: Analysis, tree: SourceTree, before: Snapshot, now: Snapshot) -> list[str]:
    """Set the inputs of the files that changed, appeared or went; the changed paths that
    were read (one that cannot be read is left out of the analysis, and says why)."""
    changed = sorted(p for p in now if before.get(p) != now[p])
    unread = set()
    for path in changed:
        try:
            db.source[path] = read_source(path)
        except (OSError, ValueError) as exc:
            _print(f"skipped: {path}: {describe_read_error(exc)}")
            unread.add(path)
    readable = tuple(f for f in tree.files if f.path in now and f.path not in unread)
    if readable != db.layout[LAYOUT] or set(before) != set(now):
        db.layout[LAYOUT] = readable
    return [p for p in changed if p not in unread]


async def _reanalyze(db: Analysis, changed: list[str]) -> Report:
    if not db.backend.parallel:  # a serial database belongs to this thread
        db.file_facts.prefetch(changed)
        return db.report()
    await anyio.to_thread.run_sync(functools.partial(db.file_facts.prefetch, changed))
    return await anyio.to_thread.run_sync(db.report)


async def _loop(db: Analysis, args: argparse.Namespace, excludes: Sequence[str]) -> None:
    tree = discover(args.paths, excludes)
    snapshot = _snapshot(tree)
    report: Report = db.report()
    use_watchfiles = args.poll is None and _has_watchfiles()
    how = "watchfiles" if use_watchfiles else f"polling every {args.poll or 0.5:g} s"
    _print(f"watching {len(snapshot)} files under {', '.join(args.paths)} ({how}); Ctrl-C stops")
    events = _watchfiles(args.paths) if use_watchfiles else _poll(args.poll or 0.5)
    async for _ in events:
        tree = discover(args.paths, excludes)
        now = _snapshot(tree)
        if now == snapshot:
            continue
        changed = _update(db, tree, snapshot, now)
        snapshot = now
        start = time.perf_counter()
        new = await _reanalyze(db, [p for p in changed if p in now])
        seconds = time.perf_counter() - start
        added, removed = changes(report.findings, new.findings)
        revision = db.stats().revisions.get(db.revision)
        executed = revision.executed if revision else 0
        _print(
            f"{len(changed)} file(s) changed: re-analyzed in {seconds:.3f} s ({executed} "
            f"queries executed); findings: +{len(added)} -{len(removed)}"
        )
        for finding in added:
            _print(f"+ {finding}")
        for finding in removed:
            _print(f"- {finding}")
        report = new


def watch(db: Analysis, args: argparse.Namespace, excludes: Sequence[str]) -> int:
    """Watch until Ctrl-C; returns the exit status (0)."""
    try:
        anyio.run(_loop, db, args, excludes)
    except KeyboardInterrupt:
        _print("stopped watching")
        sys.stdout.flush()
    return 0
