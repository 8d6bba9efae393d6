"""``dualmode analyze [PATH ...]``: the command line of the analyzer.

Exit status (docs/analyze.md):

- 0: every file was analyzed (findings are results, not failures);
- 1: ``--compare`` found two backends' reports different, or a backend failed;
- 2: usage: a PATH that does not exist, a bad option, an unknown or unusable backend;
- 3: the analysis ran, but some files were skipped: unreadable, undecodable, or a symlink
  loop (each named on stderr and in ``--json``'s ``report.skipped``);
- 4: nothing to analyze: no Python file under the PATHs;
- 130: interrupted (Ctrl-C), except under ``--watch``, where Ctrl-C is the way out (0).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import dualmode as dm
from dualmode.config import BACKEND_ENV, _auto_name, _free_threaded, _workers_from_environment

from .files import DEFAULT_EXCLUDES, STDLIB_EXCLUDES, Problem, SourceTree, discover, stdlib_path
from .findings import changes
from .queries import DEFAULT_MAX_COMPLEXITY, Analysis
from .report import Report
from .runs import RunStats, edit_run, first_run, load
from .summary import print_profile, print_runs, print_summary

__all__ = ["add_command", "run_command"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_EMPTY = 4
EXIT_INTERRUPTED = 130

# A tree's syntax trees live as long as the database: with CPython's default thresholds the
# collector walks them again and again (3-4x the parsing time on the standard library), so
# the command collects less often while it runs, as mypy does.
GC_THRESHOLD = (100_000, 50, 1000)


def _error(message: str) -> None:
    print(f"dualmode analyze: {message}", file=sys.stderr)


@dataclass(frozen=True)
class BackendChoice:
    """The backend to run on, its worker count (None: the backend's default), and why."""

    name: str
    workers: int | None
    reason: str


def choose_backend(requested: str | None, workers: int | None) -> BackendChoice:
    """``--backend`` (else ``DUALMODE_BACKEND``, else ``auto``) and ``--workers`` (else
    ``DUALMODE_WORKERS``). Raises dm.ConfigError naming the choices when the backend is
    unknown or cannot run here."""
    env = os.environ.get(BACKEND_ENV, "").strip()
    name = requested or env or "auto"
    why = "--backend" if requested else (f"{BACKEND_ENV}={env}" if env else "the default")
    if name == "auto":
        name = _auto_name()
        cpus = dm.Backend.default_workers()
        if _free_threaded():
            why = f"auto ({why}): a free-threaded build, so threads"
        elif cpus > 1:
            why = f"auto ({why}): a GIL build with {cpus} CPUs, so processes"
        else:
            why = f"auto ({why}): 1 CPU, so serial"
    found = dm.available_backends()
    if name not in found:
        raise dm.ConfigError(f"unknown backend {name!r}; choose from: auto, {', '.join(found)}")
    if found[name] is not None:
        raise dm.ConfigError(f"backend {name!r} cannot run here: {found[name]}")
    if workers is None:
        workers = _workers_from_environment()  # ConfigError naming a bad DUALMODE_WORKERS
    return BackendChoice(name, workers, why)


@contextlib.contextmanager
def collecting_less(exiting: bool) -> Iterator[None]:
    """:data:`GC_THRESHOLD` in this process while the block runs (the syntax trees live until
    its end: restoring the thresholds earlier would make the next collection walk them all).
    *exiting*: the process ends after the block, so what it made is frozen instead (no
    collection walks or frees it: seconds on the standard library's trees)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        if exiting:
            gc.freeze()
        gc.set_threshold(*before)


def _set_gc_threshold() -> None:
    gc.set_threshold(*GC_THRESHOLD)


@contextlib.contextmanager
def progress_bar(enabled: bool, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr (nothing left behind), as a (done, total) callback."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@dataclass
class Outcome:
    """One backend's analysis: its report, runs, skipped files and database."""

    db: Analysis
    report: Report
    runs: list[RunStats]
    skipped: list[Problem]
    edited: list[str]


def analyze(
    tree: SourceTree, choice: BackendChoice, args: argparse.Namespace, show_progress: bool
) -> Outcome | int:
    """Load and analyze *tree* on *choice*; an exit status instead when nothing could be."""
    db = Analysis(backend=choice.name, workers=choice.workers, max_complexity=args.max_complexity)
    if db.backend.name == "processes":  # the worker processes hold syntax trees too
        dm.broadcast(_set_gc_threshold, backend=db.backend)
    files, unreadable = load(db, tree.files)
    skipped = sorted([*tree.problems, *unreadable])
    paths = [f.path for f in files]
    if not paths:
        for problem in skipped:
            _error(str(problem))
        if skipped:
            _error("no file could be analyzed")
            return EXIT_SKIPPED
        _error(
            f"no Python files under {', '.join(args.paths)}; give a directory that holds "
            ".py files, or a .py file"
        )
        return EXIT_EMPTY
    with progress_bar(show_progress, f"analyzing {len(paths)} files") as progress:
        report, run = first_run(db, paths, progress)
    runs = [run]
    edited: list[str] = []
    if args.edit:
        report, again, edited = edit_run(db, paths, args.edit)
        runs.append(again)
    if getattr(args, "exiting", False) and db.backend.name == "processes":
        # The worker processes end with this one: freeze their trees, as collecting_less
        # does here, so that no last collection walks them (seconds on the stdlib).
        dm.broadcast(gc.freeze, backend=db.backend)
    return Outcome(db, report, runs, skipped, edited)


def _report_json(outcome: Outcome) -> dict[str, Any]:
    report = outcome.report.to_json()
    report["skipped"] = [{"path": p.path, "message": p.message} for p in outcome.skipped]
    return report


def _output(
    outcome: Outcome, choice: BackendChoice, args: argparse.Namespace, first: Report
) -> None:
    stats = outcome.db.stats()
    backend = outcome.db.backend
    if args.json:
        document: dict[str, Any] = {
            "report": _report_json(outcome),
            "runs": [run.to_json() for run in outcome.runs],
            "backend": {"name": backend.name, "workers": backend.workers, "reason": choice.reason},
            "cache": {
                "hits": sum(q.hits for q in stats.values()),
                "misses": sum(q.misses for q in stats.values()),
                "executions": sum(q.executions for q in stats.values()),
            },
        }
        if outcome.edited:
            document["edited"] = outcome.edited
        if args.profile:
            document["profile"] = {
                name: {
                    "executions": q.executions,
                    "hits": q.hits,
                    "misses": q.misses,
                    "self_seconds": round(q.self_time, 4),
                    "total_seconds": round(q.total_time, 4),
                }
                for name, q in stats.items()
            }
        print(json.dumps(document, indent=2))
        return
    console = Console()
    print_summary(console, outcome.report, outcome.skipped, args.paths)
    label = f"{backend.name}, {backend.workers} worker{'s' * (backend.workers != 1)}"
    print_runs(console, outcome.runs, label, choice.reason, stats)
    if outcome.edited:
        added, removed = changes(first.findings, outcome.report.findings)
        console.print(f"edited in memory: {', '.join(outcome.edited)}", markup=False)
        for finding in added:
            console.print(f"+ {finding}", markup=False, highlight=False)
        for finding in removed:
            console.print(f"- {finding}", markup=False, highlight=False)
    if args.profile:
        print_profile(console, stats)


@dataclass(frozen=True)
class _Compared:
    """One backend's part in ``--compare``."""

    backend: str
    workers: int
    seconds: float
    report: list[str]  # the report's JSON, a line each, for a diff


def _compare(tree: SourceTree, args: argparse.Namespace, show_progress: bool) -> int:
    """Every available backend on the same tree: same report, and how fast each was."""
    order = {"serial": 0, "threads": 1, "processes": 2}  # serial first: the baseline
    usable = [n for n, why in dm.available_backends().items() if why is None]
    names = sorted(usable, key=lambda n: (order.get(n, 3), n))
    errors = Console(stderr=True)
    status = EXIT_OK
    compared: list[_Compared] = []
    first_json: dict[str, Any] = {}
    for name in names:
        try:
            outcome = analyze(
                tree, BackendChoice(name, args.workers, "--compare"), args, show_progress
            )
        except Exception as exc:
            _error(f"--compare: backend {name!r} failed: {type(exc).__name__}: {exc}")
            status = EXIT_MISMATCH
            continue
        if isinstance(outcome, int):
            return outcome
        report = _report_json(outcome)
        first_json = first_json or report
        lines = json.dumps(report, indent=1).splitlines()
        workers = outcome.db.backend.workers
        compared.append(_Compared(name, workers, outcome.runs[0].seconds, lines))
        del outcome  # its syntax trees: one backend's at a time
        gc.collect()
    if not compared:
        return status
    base = compared[0]
    for other in compared[1:]:
        if other.report != base.report:
            status = EXIT_MISMATCH
            errors.print(f"{other.backend}'s report differs from {base.backend}'s:", style="red")
            diff = difflib.unified_diff(
                base.report, other.report, base.backend, other.backend, lineterm="", n=1
            )
            for line in list(diff)[:60]:
                errors.print(line, markup=False, highlight=False)
    rows = [(c, base.seconds / c.seconds, c.report == base.report) for c in compared]
    if args.json:
        table_json = [
            {
                "backend": c.backend,
                "workers": c.workers,
                "seconds": round(c.seconds, 4),
                "speedup": round(speedup, 3),
                "identical": same,
            }
            for c, speedup, same in rows
        ]
        print(json.dumps({"report": first_json, "compare": table_json}, indent=2))
        return status
    table = Table(title=f"{first_json['files']} files on every backend", title_justify="left")
    for header in ("backend", "workers", "seconds", f"speed-up vs {base.backend}", "report"):
        table.add_column(header)
    for c, speedup, same in rows:
        shown = "identical" if same else "DIFFERENT"
        table.add_row(c.backend, str(c.workers), f"{c.seconds:.3f}", f"{speedup:.2f}x", shown)
    console = Console()
    console.print(table)
    if status == EXIT_OK:
        findings = len(first_json["findings"])
        console.print(f"every backend gave the same report ({findings} findings)")
    return status


def run_command(args: argparse.Namespace) -> int:
    """The ``dualmode analyze`` command; returns its exit status."""
    with collecting_less(getattr(args, "exiting", False)):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        _error("--workers must be a positive integer")
        return EXIT_USAGE
    if args.edit is not None and args.edit < 0:
        _error("--edit must be 0 or a positive integer")
        return EXIT_USAGE
    given = list(args.paths)
    excludes = (*DEFAULT_EXCLUDES, *(() if given else STDLIB_EXCLUDES), *args.exclude)
    args.paths = given or [stdlib_path()]
    try:
        tree = discover(args.paths, excludes)
    except FileNotFoundError as exc:
        _error(f"{exc.filename}: no such file or directory; give existing files or directories")
        return EXIT_USAGE
    show_progress = not args.no_progress
    try:
        if args.compare:
            return _compare(tree, args, show_progress)
        choice = choose_backend(args.backend, args.workers)
    except dm.ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        outcome = analyze(tree, choice, args, show_progress)
        if isinstance(outcome, int):
            return outcome
        first = outcome.report
        for problem in outcome.skipped:
            _error(str(problem))
        _output(outcome, choice, args, first)
        if args.watch:
            from .watch import watch

            return watch(outcome.db, args, excludes)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_SKIPPED if outcome.skipped else EXIT_OK


def add_command(commands: Any) -> None:
    """Add ``analyze`` to the ``dualmode`` command's subcommands (argparse)."""
    parser = commands.add_parser(
        "analyze",
        help="analyze Python source trees (default: the standard library) with the query engine",
        description="Analyze Python files in parallel and incrementally with dualmode's query "
        "engine: unused imports (as pyflakes), unresolved relative imports, import cycles, "
        "complex functions, syntax errors. Exit status: 0 analyzed; 1 --compare found "
        "different reports; 2 usage error; 3 some files skipped (unreadable, undecodable, "
        "symlink loop); 4 no Python files.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories (default: this interpreter's standard library, without "
        "its tests)",
    )
    parser.add_argument(
        "--backend",
        metavar="NAME",
        help="serial, threads, processes or auto (default: DUALMODE_BACKEND, else auto)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="worker threads or processes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run every available backend; check that the reports are identical",
    )
    parser.add_argument(
        "--edit",
        type=int,
        metavar="N",
        help="then edit N files in memory and re-analyze incrementally",
    )
    parser.add_argument(
        "--watch", action="store_true", help="re-analyze whenever a file under PATH changes"
    )
    parser.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="with --watch: poll for changes every SECONDS instead of using watchfiles",
    )
    parser.add_argument("--profile", action="store_true", help="per-query counts and times")
    parser.add_argument(
        "--max-complexity",
        type=int,
        default=DEFAULT_MAX_COMPLEXITY,
        metavar="N",
        help=f"report functions above this complexity (default {DEFAULT_MAX_COMPLEXITY})",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files and directories whose name matches (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run_command)
