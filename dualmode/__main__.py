"""The ``dualmode`` command: ``dualmode demo`` and ``dualmode backends``.

``python -m dualmode demo`` runs one short program on every available backend: it creates an
AtomicInt, a ShardedDict, a Mutex and a OnceCell under ``dm.use(name)``, updates them from
4 tasks (in order on serial, on 4 threads on threads, on 2 spawned processes on processes) and
prints what each backend computed, which is the same everywhere. ``dualmode backends`` lists
the registered backends and why any of them cannot run here.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dualmode as dm
from dualmode.config import BACKEND_ENV, WORKERS_ENV, _auto_name, _free_threaded

__all__ = ["main"]

T = TypeVar("T")
ITERATIONS = 200
TASKS = 4  # on every backend, so that every backend must compute the same totals
PROCESSES = 2  # the processes backend runs TASKS // PROCESSES tasks in each process


def _gil_state() -> str:
    if not _free_threaded():
        return "GIL build"
    is_enabled: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    if is_enabled is not None and is_enabled():
        return "free-threaded build, GIL re-enabled"
    return "free-threaded build, GIL disabled"


def _new(cls: Callable[..., T], *args: Any) -> T:
    """``cls(*args)``: a public primitive class builds the backend in force's implementation.

    (Spelled as a call through ``Callable`` because mypy sees the public classes as abstract.)
    """
    return cls(*args)


def _importable(fn: Callable[..., None]) -> Callable[..., None]:
    """*fn* as a spawned process can unpickle it: by its name in ``dualmode.__main__``.

    Under ``python -m dualmode`` this module runs as ``__main__``, which multiprocessing does
    not re-run in a spawned child; the same function from the imported module pickles fine.
    """
    if fn.__module__ != "__main__":
        return fn
    found: Callable[..., None] = getattr(importlib.import_module("dualmode.__main__"), fn.__name__)
    return found


def _init_value(init_runs: dm.AtomicInt) -> str:
    """The OnceCell initialiser: counts its runs, which must total exactly one."""
    init_runs.fetch_add(1)
    return f"set by pid {os.getpid()}"


def _work(
    tasks: Sequence[int],
    iterations: int,
    counter: dm.AtomicInt,
    table: dm.ShardedDict,
    total: dm.Mutex,
    cell: dm.OnceCell,
    init_runs: dm.AtomicInt,
) -> None:
    """Run *tasks* in turn; module-level so that spawned processes can run it."""
    for task in tasks:
        cell.get_or_init(lambda: _init_value(init_runs))
        for i in range(iterations):
            counter.fetch_add(1)
            with total.lock() as guard:
                guard.value = guard.value + 1
            table.set(f"task-{task}", i + 1)


@dataclass
class _Outcome:
    backend: str
    parallel: bool
    ran_on: str
    tasks: int
    iterations: int
    counter: int
    mutex: int
    keys: int
    per_key: str
    init_runs: int
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        want = self.tasks * self.iterations
        return (
            self.error is None
            and self.counter == want
            and self.mutex == want
            and self.keys == self.tasks
            and self.per_key == str(self.iterations)
            and self.init_runs == 1
        )


def _run_backend(name: str, iterations: int) -> _Outcome:
    start = time.perf_counter()
    with dm.use(name) as backend:
        counter = _new(dm.AtomicInt, 0)
        table = _new(dm.ShardedDict)
        total = _new(dm.Mutex, 0)
        cell = _new(dm.OnceCell)
        init_runs = _new(dm.AtomicInt, 0)
        shared = (counter, table, total, cell, init_runs)
        error: str | None = None
        if not backend.parallel:
            ran_on = "calling thread"
            _work(range(TASKS), iterations, *shared)
        elif name == "processes":
            ran_on = f"{PROCESSES} processes"
            ctx = multiprocessing.get_context("spawn")
            procs = [
                ctx.Process(
                    target=_importable(_work),
                    args=(range(proc, TASKS, PROCESSES), iterations, *shared),
                    daemon=True,
                )
                for proc in range(PROCESSES)
            ]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(120)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    error = "a process did not finish within 120 s"
                elif proc.exitcode != 0:
                    error = f"a process exited with code {proc.exitcode}"
        else:
            ran_on = f"{TASKS} threads"
            failures: list[BaseException] = []

            def run(task: int) -> None:
                try:
                    _work([task], iterations, *shared)
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(TASKS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            if any(thread.is_alive() for thread in threads):
                error = "a thread did not finish within 120 s"
            elif failures:
                error = f"{type(failures[0]).__name__}: {failures[0]}"
        values = sorted(set(dict(table.items()).values()))
        with total.lock() as guard:
            mutex_value = guard.value
        return _Outcome(
            backend=name,
            parallel=backend.parallel,
            ran_on=ran_on,
            tasks=TASKS,
            iterations=iterations,
            counter=counter.load(),
            mutex=mutex_value,
            keys=len(table),
            per_key=",".join(map(str, values)),
            init_runs=init_runs.load(),
            seconds=time.perf_counter() - start,
            error=error,
        )


def _selection_lines() -> list[tuple[str, str]]:
    env_backend = os.environ.get(BACKEND_ENV) or "(unset)"
    env_workers = os.environ.get(WORKERS_ENV) or "(unset)"
    try:
        in_force = repr(dm.current())
    except dm.ConfigError as exc:
        in_force = f"error: {exc}"
    return [
        ("python", f"{sys.version.split()[0]} ({_gil_state()}), {os.cpu_count()} CPUs"),
        (BACKEND_ENV, env_backend),
        (WORKERS_ENV, env_workers),
        ("auto would choose", _auto_name()),
        ("backend in force (dm.current())", in_force),
    ]


def _print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table when rich is installed (``pip install 'dualmode[bench]'``), else plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
        print(title)
        for line in (headers, ["-" * w for w in widths], *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        print()
        return
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _cmd_backends(args: argparse.Namespace) -> int:
    found = dm.available_backends()
    rows = [(name, "yes" if why is None else "no", why or "") for name, why in found.items()]
    _print_table("dualmode.available_backends()", ["backend", "usable", "reason"], rows)
    _print_table("backend selection", ["setting", "value"], _selection_lines())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    found = dm.available_backends()
    builtin = {"serial": 0, "threads": 1, "processes": 2}
    usable = sorted((n for n, why in found.items() if why is None), key=lambda n: builtin.get(n, 3))
    names: list[str] = args.backend or usable
    if not names:
        print("dualmode demo: no usable backend; see `dualmode backends` for why", file=sys.stderr)
        return 1
    unknown = [n for n in names if n not in found]
    if unknown:
        print(
            f"dualmode demo: unknown backend {unknown[0]!r}; choose from: {', '.join(found)}",
            file=sys.stderr,
        )
        return 2
    _print_table("backend selection", ["setting", "value"], _selection_lines())
    labels = [
        "parallel",
        "ran on",
        "AtomicInt total",
        "Mutex total",
        "ShardedDict",
        "OnceCell inits",
        "seconds",
        "result",
    ]
    columns: list[list[str]] = []
    failed = False
    for name in names:
        reason = found[name]
        if reason is not None:
            columns.append([""] * 7 + [f"unavailable: {reason}"])
            failed = True
            continue
        try:
            outcome = _run_backend(name, args.iterations)
        except Exception as exc:
            columns.append([""] * 7 + [f"failed: {type(exc).__name__}: {exc}"])
            failed = True
            continue
        failed |= not outcome.ok
        columns.append(
            [
                "yes" if outcome.parallel else "no",
                outcome.ran_on,
                str(outcome.counter),
                str(outcome.mutex),
                f"{outcome.keys} keys, each {outcome.per_key}",
                str(outcome.init_runs),
                f"{outcome.seconds:.2f}",
                "ok" if outcome.ok else f"WRONG: {outcome.error or 'unexpected totals'}",
            ]
        )
    _print_table(
        f"{TASKS} tasks on each backend; each adds 1 to an AtomicInt and a Mutex "
        f"{args.iterations} times, stores its count in a ShardedDict and asks a OnceCell for "
        "its value",
        ["", *names],
        [[label, *(col[i] for col in columns)] for i, label in enumerate(labels)],
    )
    if failed:
        print("dualmode demo: some backends failed (see the result row)", file=sys.stderr)
        return 1
    print("every backend computed the same totals; the OnceCell initialiser ran once on each.")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualmode",
        description="dualmode: one API for locks, parallel iteration and queries, run on any "
        "backend (serial, threads, processes, or a third party's).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a short program on every available backend and show the results",
        description="Run a short program on every available backend (or the ones named with "
        "--backend) and print a table of what each computed.",
    )
    demo.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="run only on this backend (repeatable); default: every available backend",
    )
    demo.add_argument(
        "--iterations",
        type=int,
        default=ITERATIONS,
        metavar="N",
        help=f"updates per task (default {ITERATIONS})",
    )
    demo.set_defaults(handler=_cmd_demo)
    backends = commands.add_parser(
        "backends",
        help="list the registered backends and whether each can run here",
        description="Print dualmode.available_backends() and how the backend is selected.",
    )
    backends.set_defaults(handler=_cmd_backends)
    return parser


def _shadowed_by_checkout() -> str | None:
    """Why the built-in backends cannot be imported from here, if it is a source checkout.

    In the repository, ``backends/`` sits next to ``dualmode/`` and only an install maps it to
    ``dualmode.backends``. ``python -m dualmode`` run from the repository root imports the
    ``dualmode/`` directory in front of an installed (non-editable) copy, without the mapping.
    """
    package_dir = Path(dm.__file__).resolve().parent
    if importlib.util.find_spec("dualmode.backends") is not None:
        return None
    if not (package_dir.parent / "backends" / "__init__.py").exists():
        return None
    return (
        f"dualmode was imported from the source checkout {package_dir}, where backends/ is not "
        "yet mapped to dualmode.backends (the current directory comes first on sys.path under "
        "`python -m`). Use the installed command `dualmode`, run from another directory, or "
        "install the checkout in editable mode: python3 -m pip install -e ."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dualmode`` console script and of ``python -m dualmode``."""
    args = _parser().parse_args(argv)
    if getattr(args, "iterations", 1) < 1:
        print("dualmode demo: --iterations must be a positive integer", file=sys.stderr)
        return 2
    problem = _shadowed_by_checkout()
    if problem is not None:
        print(f"dualmode {args.command}: {problem}", file=sys.stderr)
        return 1
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        result: Any = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `dualmode backends | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
