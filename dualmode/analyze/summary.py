"""The human-readable output of ``dualmode analyze``, drawn with rich."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

import dualmode as dm

from .files import Problem
from .findings import KINDS
from .report import Report
from .runs import RunStats

__all__ = ["print_profile", "print_runs", "print_summary"]

CYCLES_SHOWN = 5
FINDINGS_SHOWN = 3  # of each kind


def shorten(path: str, roots: Sequence[str]) -> str:
    """*path* relative to the directory given on the command line that holds it (the JSON
    keeps paths as given)."""
    for root in roots:
        base = root.rstrip(os.sep) + os.sep
        if path.startswith(base):
            return path[len(base) :]
    return path


def _table(title: str, *headers: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    return table


def print_summary(
    console: Console,
    report: Report,
    skipped: Sequence[Problem],
    roots: Sequence[str],
    show: int = FINDINGS_SHOWN,
) -> None:
    """Totals, the largest import cycles, the most complex functions, findings by kind and
    the first *show* findings of each kind; paths relative to *roots* (those given)."""
    totals = _table(
        f"analyzed {', '.join(roots)}", "files", "lines", "functions", "classes", "import edges"
    )
    totals.add_row(
        *(f"{n:,}" for n in (report.files, report.lines, report.functions, report.classes)),
        f"{report.import_edges:,}",
    )
    console.print(totals)
    if report.cycles:
        cycles = _table(f"largest import cycles (of {len(report.cycles)})", "modules", "size")
        cycles.columns[0].justify = "left"
        for cycle in report.cycles[:CYCLES_SHOWN]:
            shown = ", ".join(cycle[:6]) + (f", ... (+{len(cycle) - 6})" if len(cycle) > 6 else "")
            cycles.add_row(shown, str(len(cycle)))
        console.print(cycles)
    if report.most_complex:
        complex_table = _table("most complex functions", "function", "complexity")
        for c in report.most_complex:
            where = f"{shorten(c.path, roots)}:{c.function.line}"
            complex_table.add_row(f"{where} {c.function.qualname}", str(c.function.complexity))
        console.print(complex_table)
    kinds = _table("findings by kind", "kind", "count")
    for kind, count in report.by_kind().items():
        kinds.add_row(kind, str(count))
    console.print(kinds)
    for kind in KINDS:
        of_kind = [f for f in report.findings if f.kind == kind]
        for finding in of_kind[:show]:
            where = f"{shorten(finding.path, roots)}:{finding.line}"
            text = f"{where}: {kind}: {finding.message}"
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        if len(of_kind) > show:
            console.print(f"  ... and {len(of_kind) - show} more {kind} (--json lists all)")
    for problem in skipped:
        console.print(f"skipped: {problem}", markup=False, highlight=False, style="yellow")


def print_runs(
    console: Console, runs: Sequence[RunStats], backend: str, reason: str, stats: dm.DatabaseStats
) -> None:
    """Each run's time and what it executed, the backend and why, and the cache counts."""
    table = _table(
        f"runs on {backend} ({reason})", "run", "seconds", "executed", "green", "backdated"
    )
    first = runs[0].seconds if runs else 0.0
    for run in runs:
        seconds = f"{run.seconds:.3f}"
        if run.kind != "first" and first:
            seconds += f" ({run.seconds / first:.1%} of first)"
        table.add_row(run.kind, seconds, str(run.executed), str(run.green), str(run.backdated))
    console.print(table)
    hits = sum(q.hits for q in stats.values())
    misses = sum(q.misses for q in stats.values())
    executions = sum(q.executions for q in stats.values())
    console.print(f"cache: {hits:,} hits, {misses:,} misses, {executions:,} executions")


def print_profile(console: Console, stats: dm.DatabaseStats) -> None:
    """Per query: executions, hits, misses, self and total time (rustc's -Z self-profile)."""
    table = _table(
        "query profile (self time: in the body, less its dependencies)",
        "query",
        "executions",
        "hits",
        "misses",
        "self s",
        "total s",
        "wait s",
    )
    for name, q in sorted(stats.items(), key=lambda item: -item[1].self_time):
        table.add_row(
            name,
            str(q.executions),
            str(q.hits),
            str(q.misses),
            f"{q.self_time:.3f}",
            f"{q.total_time:.3f}",
            f"{q.wait_time:.3f}",
        )
    console.print(table)
