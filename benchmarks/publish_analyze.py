"""docs/bench.md and docs/bench/analyze-speedup.png from the figures of bench_analyze.py.

    python benchmarks/publish_analyze.py [DIR]

Reads every DIR/analyze-<python>.json (default docs/bench), as ``bench_analyze.py --publish
DIR`` writes them, one per interpreter, and writes the markdown table and, where matplotlib is
installed, the plot of each backend's speed-up over serial per interpreter (with the ceiling
the machine allowed in the same run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLOT = "analyze-speedup.png"


def _table(figures: list[dict[str, Any]]) -> str:
    lines = [
        "| python | files | serial / pyflakes (whole process) | threads(2) speed-up | "
        "processes(2) speed-up | ceiling (no dualmode) | --edit 1: executed, time |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        edit = f["edit"]["serial"]
        lines.append(
            f"| {f['python']} | {f['files']} "
            f"| {f['serial_process_seconds']:.2f} s / {f['pyflakes_seconds']:.2f} s "
            f"| {f['speedup']['threads']:.2f}x | {f['speedup']['processes']:.2f}x "
            f"| {f['ceiling_speedup']:.2f}x "
            f"| {edit['executed']} of {f['first_executed']}, "
            f"{edit['seconds'] / f['first_run_seconds']['serial']:.1%} of the first run |"
        )
    return "\n".join(lines)


def _plot(figures: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = ["threads", "processes", "ceiling"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(figures)
    for i, f in enumerate(figures):
        values = [f["speedup"]["threads"], f["speedup"]["processes"], f["ceiling_speedup"]]
        xs = [x + i * width for x in range(len(bars))]
        ax.bar(xs, values, width, label=f"Python {f['python']}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([x + width * (len(figures) - 1) / 2 for x in range(len(bars))])
    ax.set_xticklabels(["threads(2)", "processes(2)", "ceiling: per-file work, 2 vs 1"])
    ax.set_ylabel("speed-up over serial")
    ax.set_title("dualmode analyze on the standard library (first run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "bench"
    figures = [json.loads(p.read_text()) for p in sorted(directory.glob("analyze-*.json"))]
    if not figures:
        raise SystemExit(f"no analyze-*.json in {directory}: run bench_analyze.py --publish first")
    plotted = _plot(figures, directory / PLOT)
    page = [
        "# Benchmarks",
        "",
        "`dualmode analyze` on the standard library, written by `nox -s bench`",
        "(`benchmarks/bench_analyze.py --publish docs/bench`, then",
        "`benchmarks/publish_analyze.py`). The machine's ceiling is the analyzer's per-file work",
        "(parse, symbols, complexity, unused imports) on the same files in 2 processes (2 threads",
        "on a free-threaded build) against 1, with no dualmode, in the",
        "same turns: on a shared machine no backend can beat it. See",
        "[dualmode analyze](analyze.md#speed) for what the figures measure.",
        "",
        _table(figures),
        "",
    ]
    if plotted:
        page += [f"![speed-up over serial per backend and interpreter](bench/{PLOT})", ""]
    (ROOT / "docs" / "bench.md").write_text("\n".join(page))
    print(f"wrote docs/bench.md{' and ' + str(directory / PLOT) if plotted else ''}")


if __name__ == "__main__":
    main()
