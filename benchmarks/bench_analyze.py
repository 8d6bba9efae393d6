"""``dualmode analyze`` on the standard library, per backend, against pyflakes (issue 14).

    python benchmarks/bench_analyze.py [--repeats 3] [--json out.json] [--publish DIR]

``--publish DIR`` also writes DIR/analyze-<interpreter>.json, which
``benchmarks/publish_analyze.py`` turns into docs/bench.md and its plot.

Each figure is one process per run, started the way a user starts it, best of --repeats runs
taken in turn (pyflakes, serial, threads(2), processes(2), ...) so that a noisy spell of a
shared machine falls on every side of a ratio:

- ``dualmode analyze --backend serial`` / ``python -m pyflakes FILES`` on the same files, wall
  time of the whole process [target <= 1.0]
- the first run (analysis to report, inside the process) on threads(2) and processes(2) /
  serial's [targets: processes on a GIL build <= 0.67 (>= 1.5x), threads on a free-threaded
  build <= 0.56 (>= 1.8x)]
- the CPU seconds of the whole process tree (the command, its workers and coordinator, all
  reaped before it exits), threads(2) and processes(2) / serial's, least of the runs: what
  parallelism costs, far less noisy than time on a shared machine [no target; 1.0 = nothing]
- ``--edit 1``: the incremental run / the first run, time and queries executed [target < 0.05
  and < 0.01]
- the ceiling the machine allows right now: the analyzer's per-file work (``parse_module`` and
  ``file_facts_of``: what the workers run) on the same files in 2 processes (2 threads on a
  free-threaded build) with no dualmode / in one, measured in the same turns (on a shared
  machine it is well under 2.0, and no backend can beat it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from report import Row, best_of_turns, report

from dualmode.analyze.files import (
    DEFAULT_EXCLUDES,
    STDLIB_EXCLUDES,
    discover,
    read_source,
    stdlib_path,
)
from dualmode.analyze.parse import parse_module
from dualmode.analyze.queries import file_facts_of

WORKERS = 2


def _pyflakes(files: list[str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True)
        return time.perf_counter() - start

    return run


def _analyze_all(paths: list[str]) -> int:
    """The per-file work of ``dualmode analyze`` on *paths*, with no query engine."""
    facts = [file_facts_of(parse_module(read_source(path), path), path) for path in paths]
    return len(facts)


def _ceiling(files: list[str], pool: Executor) -> tuple[Callable[[], float], Callable[[], float]]:
    """(one worker, two workers) parsing *files* with no dualmode."""

    def one() -> float:
        start = time.perf_counter()
        pool.submit(_analyze_all, files).result()
        return time.perf_counter() - start

    def two() -> float:
        start = time.perf_counter()
        list(pool.map(_analyze_all, [files[0::2], files[1::2]]))
        return time.perf_counter() - start

    return one, two


def _children_cpu() -> float:
    """CPU seconds of this process's reaped descendants (each reaped its own)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _analyze(
    backend: str, runs: dict[str, list[dict[str, Any]]], cpu: dict[str, float]
) -> Callable[[], float]:
    argv = [sys.executable, "-m", "dualmode", "analyze", "--json", "--no-progress"]
    argv += ["--backend", backend, "--workers", str(WORKERS), "--edit", "1"]

    def run() -> float:
        start, start_cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        cpu[backend] = min(cpu.get(backend, float("inf")), _children_cpu() - start_cpu)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        mine = json.loads(done.stdout)["runs"]
        best = runs.get(backend)
        if best is None or mine[0]["seconds"] < best[0]["seconds"]:
            runs[backend] = mine
        return wall

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--publish", metavar="DIR", help="also write DIR/analyze-<python>.json")
    args = parser.parse_args()
    files = [f.path for f in discover([stdlib_path()], DEFAULT_EXCLUDES + STDLIB_EXCLUDES).files]
    backends = ["serial", "threads", "processes"]
    runs: dict[str, list[dict[str, Any]]] = {}
    cpu: dict[str, float] = {}
    free_threaded = not getattr(sys, "_is_gil_enabled", lambda: True)()
    pool: Executor = ThreadPoolExecutor(2) if free_threaded else ProcessPoolExecutor(2)
    with pool:
        list(pool.map(_analyze_all, [files[:1], files[:1]]))  # started
        walls = best_of_turns(
            [_pyflakes(files), *(_analyze(b, runs, cpu) for b in backends), *_ceiling(files, pool)],
            args.repeats,
        )
    pyflakes_wall, serial_wall = walls[0], walls[1]
    ceiling_one, ceiling_two = walls[-2], walls[-1]
    first = {b: runs[b][0]["seconds"] for b in backends}
    label = f"{len(files)} stdlib files"
    rows = [
        Row(
            f"{label}: dualmode analyze --backend serial vs python -m pyflakes, whole process",
            serial_wall,
            pyflakes_wall,
            "time ratio; target <= 1.0",
        )
    ]
    rows += [
        Row(
            f"{label}: first run on {b}({WORKERS}) vs serial",
            first[b],
            first["serial"],
            "time ratio; processes on a GIL build <= 0.67, threads free-threaded <= 0.56",
        )
        for b in backends[1:]
    ]
    rows.append(
        Row(
            f"{label}: the machine's ceiling now: the per-file work in 2 "
            f"{'threads' if free_threaded else 'processes'} vs 1, no dualmode",
            ceiling_two,
            ceiling_one,
            "time ratio; 0.5 on 2 idle cores",
        )
    )
    rows += [
        Row(
            f"{label}: CPU seconds of the whole process tree, {b}({WORKERS}) vs serial",
            cpu[b],
            cpu["serial"],
            "CPU ratio; what parallelism costs (1.0 = nothing), steadier than time",
        )
        for b in backends[1:]
    ]
    for b in backends:
        first_run, edit = runs[b]
        rows.append(
            Row(
                f"{label}: --edit 1 on {b} ({edit['executed']} of {first_run['executed']} "
                "queries executed) vs the first run",
                edit["seconds"],
                first_run["seconds"],
                "time ratio; target < 0.05",
            )
        )
    report(rows, args.json)
    if args.publish:
        _publish(args.publish, free_threaded, len(files), walls, first, runs)


def _publish(
    directory: str,
    free_threaded: bool,
    files: int,
    walls: tuple[float, ...],
    first: dict[str, float],
    runs: dict[str, list[dict[str, Any]]],
) -> None:
    """The figures publish_analyze.py tabulates and plots, for this interpreter."""
    version = ".".join(map(str, sys.version_info[:2])) + ("t" if free_threaded else "")
    figures = {
        "python": version,
        "files": files,
        "pyflakes_seconds": walls[0],
        "serial_process_seconds": walls[1],
        "first_run_seconds": first,
        "speedup": {b: first["serial"] / s for b, s in first.items()},
        "ceiling_speedup": walls[-2] / walls[-1],
        "edit": {
            b: {"seconds": r[1]["seconds"], "executed": r[1]["executed"]} for b, r in runs.items()
        },
        "first_executed": runs["serial"][0]["executed"],
    }
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"analyze-{version}.json"), "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
