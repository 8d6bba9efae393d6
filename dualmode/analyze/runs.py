"""Running the analysis on a database: loading the files, the first run (every file on the
backend's workers, with progress), edit runs, and what each run executed."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dualmode as dm

from .edits import edit_source, pick_files
from .files import Problem, SourceFile, describe_read_error, read_source
from .queries import LAYOUT, Analysis
from .report import Report

__all__ = ["RunStats", "edit_run", "first_run", "load"]

CHUNKS_PER_WORKER = 8  # enough chunks to balance the workers and move the progress bar


@dataclass(frozen=True)
class RunStats:
    """One run: its kind ("first" or "edit"), its wall time, and how its revision brought
    the queries up to date (executed, of those backdated, and re-validated green)."""

    kind: str
    seconds: float
    executed: int
    green: int
    backdated: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seconds": round(self.seconds, 4),
            "executed": self.executed,
            "green": self.green,
            "backdated": self.backdated,
        }


def load(db: Analysis, files: Sequence[SourceFile]) -> tuple[list[SourceFile], list[Problem]]:
    """Read *files* into *db* (``source`` and ``layout``); the files that could not be read
    are left out, each a :class:`Problem` saying why."""
    loaded: list[SourceFile] = []
    problems: list[Problem] = []
    for f in files:
        try:
            text = read_source(f.path)
        except (OSError, ValueError) as exc:
            problems.append(Problem(f.path, describe_read_error(exc)))
            continue
        db.source[f.path] = text
        loaded.append(f)
    db.layout[LAYOUT] = tuple(loaded)
    return loaded, problems


def _analyze_chunk(db: Analysis, paths: list[str]) -> None:
    # A worker process asks the database's owner for the chunk's texts and claims of its
    # syntax trees in one request each, not one of each per file.
    db.source.prefetch(paths)
    db.parse.prefetch(paths)
    db.file_facts.prefetch(paths)


def _stats(db: Analysis, kind: str, seconds: float) -> RunStats:
    revision = db.stats().revisions.get(db.revision)
    if revision is None:
        return RunStats(kind, seconds, 0, 0, 0)
    return RunStats(kind, seconds, revision.executed, revision.green, revision.backdated)


def first_run(
    db: Analysis,
    paths: Sequence[str],
    progress: Callable[[int, int], object] | None = None,
) -> tuple[Report, RunStats]:
    """Analyze every file of *paths* on the backend's workers, then build the report in this
    thread. *progress* is called with (files done, files) as chunks finish."""
    start = time.perf_counter()
    count = min(len(paths), db.backend.workers * CHUNKS_PER_WORKER)
    # Chunks of about the same amount of text: the largest files dealt out first, one to
    # each chunk in turn, so no worker is left with a chunk of big files at the end.
    by_size = sorted(paths, key=lambda p: -len(db.source[p]))
    chunks = [by_size[i::count] for i in range(count)]

    def files_done(done: int, total: int) -> None:
        if progress is not None:
            progress(sum(len(c) for c in chunks[:done]), len(paths))

    dm.par_for_each(
        functools.partial(_analyze_chunk, db),
        chunks,
        chunksize=1,
        progress=files_done,
        backend=db.backend,
    )
    report = db.report()
    return report, _stats(db, "first", time.perf_counter() - start)


def edit_run(db: Analysis, paths: Sequence[str], count: int) -> tuple[Report, RunStats, list[str]]:
    """Edit *count* of *paths* in memory (:func:`edit_source`) and bring the report up to
    date incrementally. Returns the report, the run's statistics and the edited paths."""
    edited: list[str] = []
    for first in pick_files(paths, count):
        # from each evenly spread place, the next file that has a function body to edit
        for path in paths[paths.index(first) :]:
            text = edit_source(db.source[path]) if path not in edited else None
            if text is not None:
                db.source[path] = text
                edited.append(path)
                break
    start = time.perf_counter()
    report = db.report()
    return report, _stats(db, "edit", time.perf_counter() - start), edited
