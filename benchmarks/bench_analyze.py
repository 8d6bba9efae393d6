"""``dualmode analyze`` on the standard library, per backend, against pyflakes (issue 14).

    python benchmarks/bench_analyze.py [--repeats 3] [--json out.json]

Each figure is one process per run, started the way a user starts it, best of --repeats runs
taken in turn (pyflakes, serial, threads(2), processes(2), ...) so that a noisy spell of a
shared machine falls on every side of a ratio:

- ``dualmode analyze --backend serial`` / ``python -m pyflakes FILES`` on the same files, wall
  time of the whole process [target <= 1.0]
- the first run (analysis to report, inside the process) on threads(2) and processes(2) /
  serial's [targets: processes on a GIL build <= 0.67 (>= 1.5x), threads on a free-threaded
  build <= 0.56 (>= 1.8x)]
- ``--edit 1``: the incremental run / the first run, time and queries executed [target < 0.05
  and < 0.01]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from report import Row, best_of_turns, report

from dualmode.analyze.files import DEFAULT_EXCLUDES, STDLIB_EXCLUDES, discover, stdlib_path

WORKERS = 2


def _pyflakes(files: list[str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True)
        return time.perf_counter() - start

    return run


def _analyze(backend: str, runs: dict[str, list[dict[str, Any]]]) -> Callable[[], float]:
    argv = [sys.executable, "-m", "dualmode", "analyze", "--json", "--no-progress"]
    argv += ["--backend", backend, "--workers", str(WORKERS), "--edit", "1"]

    def run() -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
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
    args = parser.parse_args()
    files = [f.path for f in discover([stdlib_path()], DEFAULT_EXCLUDES + STDLIB_EXCLUDES).files]
    backends = ["serial", "threads", "processes"]
    runs: dict[str, list[dict[str, Any]]] = {}
    walls = best_of_turns([_pyflakes(files), *(_analyze(b, runs) for b in backends)], args.repeats)
    pyflakes_wall, serial_wall = walls[0], walls[1]
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


if __name__ == "__main__":
    main()
