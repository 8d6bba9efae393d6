"""The ``dualmode`` command: ``dualmode demo``, ``dualmode backends`` and ``dualmode analyze``
(the last in :mod:`dualmode.analyze.cli`, with its own exit statuses).

``python -m dualmode demo`` runs one short program on every available backend: it creates an
AtomicInt, a ShardedDict, a Mutex and a OnceCell under ``dm.use(name)``, updates them from
4 tasks (in order on serial, on 4 threads on threads, on 2 spawned processes on processes) and
prints what each backend computed, which is the same everywhere. ``dualmode backends`` lists
the registered backends and why any of them cannot run here.

Exit status: 0 when all went well; 1 when a backend failed or the checkout shadows the
install; 2 for a usage error or an invalid configuration (``DUALMODE_BACKEND``,
``DUALMODE_WORKERS``), with the message on stderr. ``dualmode backends`` still lists the
backends when the configuration is invalid, then says which setting is wrong.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

import dualmode as dm
from dualmode.config import (
    BACKEND_ENV,
    WATCHDOG_ENV,
    WORKERS_ENV,
    _auto_name,
    _free_threaded,
    _shadowed_by_checkout,
)

__all__ = ["main"]

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
class _DemoRun:
    """What the demo computed on one backend, and whether that is what every backend must."""

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


def _run_backend(name: str, iterations: int) -> _DemoRun:
    start = time.perf_counter()
    with dm.use(name) as backend:
        counter = dm.AtomicInt(0)
        table = dm.ShardedDict()
        total = dm.Mutex(0)
        cell = dm.OnceCell()
        init_runs = dm.AtomicInt(0)
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
        return _DemoRun(
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


def _configuration_problem() -> str | None:
    """Why the configuration in force (for this command, the environment) is invalid, if it is."""
    try:
        dm.current()
    except dm.ConfigError as exc:
        return str(exc)
    return None


def _selection_lines() -> list[tuple[str, str]]:
    env_backend = os.environ.get(BACKEND_ENV) or "(unset)"
    env_workers = os.environ.get(WORKERS_ENV) or "(unset)"
    try:
        backend = dm.current()
    except dm.ConfigError as exc:
        in_force = f"error: {exc}"
    else:
        in_force = repr(backend)
        if os.environ.get(WORKERS_ENV, "").strip() and not backend.parallel:
            env_workers += f" (unused: {backend.name} is not parallel, it has 1 worker)"
    return [
        ("python", f"{sys.version.split()[0]} ({_gil_state()}), {os.cpu_count()} CPUs"),
        (BACKEND_ENV, env_backend),
        (WORKERS_ENV, env_workers),
        (WATCHDOG_ENV, os.environ.get(WATCHDOG_ENV) or "(unset)"),
        ("auto would choose", _auto_name()),
        ("backend in force (dm.current())", in_force),
    ]


def _print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table (rich is a dependency: ``dualmode analyze`` draws with it too)."""
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
    problem = _configuration_problem()
    if problem is not None:
        print(f"dualmode backends: the configuration is invalid: {problem}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    problem = _configuration_problem()
    if problem is not None:
        print(
            f"dualmode demo: the configuration is invalid, so nothing ran: {problem}",
            file=sys.stderr,
        )
        return 2
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
            run = _run_backend(name, args.iterations)
        except Exception as exc:
            columns.append([""] * 7 + [f"failed: {type(exc).__name__}: {exc}"])
            failed = True
            continue
        failed |= not run.ok
        columns.append(
            [
                "yes" if run.parallel else "no",
                run.ran_on,
                str(run.counter),
                str(run.mutex),
                f"{run.keys} keys, each {run.per_key}",
                str(run.init_runs),
                f"{run.seconds:.2f}",
                "ok" if run.ok else f"WRONG: {run.error or 'unexpected totals'}",
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
    from dualmode.analyze.cli import add_command

    add_command(commands)
    return parser


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
    args.exiting = argv is None  # the console script: the process ends with the command
    try:
        result: Any = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `dualmode backends | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
