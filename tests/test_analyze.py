"""``dualmode analyze`` (dualmode/analyze/): findings, the JSON schema, every backend giving the
same report, incremental re-runs, bad input and its exit statuses, --watch."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from dualmode.__main__ import main
from dualmode.analyze.cycles import strongly_connected
from dualmode.analyze.imports import module_names, resolve_imports
from dualmode.analyze.parse import parse_module
from dualmode.analyze.symbols import ImportStatement
from dualmode.analyze.unused import unused_imports

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("close_named_backends")]

PROJECT = {
    "app/__init__.py": "from . import models\n",
    "app/models.py": textwrap.dedent(
        """\
        import os
        import sys
        from . import views


        def argv():
            return sys.argv
        """
    ),
    "app/views.py": "from app import models\nfrom .missing import thing\n",
    "app/branchy.py": textwrap.dedent(
        """\
        def branchy(x):
            if x:
                return 1
            for _ in x:
                while x:
                    pass
            try:
                pass
            except ValueError:
                pass
            return 0
        """
    ),
    "broken.py": "def f(:\n    pass\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "project", PROJECT)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = main(["analyze", "--json", "--no-progress", *argv])
    out = capsys.readouterr().out
    return status, json.loads(out)


def findings(document: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    return [(f["kind"], f["path"], f["line"], f["message"]) for f in document["report"]["findings"]]


def test_every_kind_of_finding_on_every_backend(
    project: Path, dualmode_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, document = run_json(
        capsys,
        str(project),
        "--backend",
        dualmode_backend,
        "--workers",
        "2",
        "--max-complexity",
        "4",
    )
    assert status == 0
    app, complexity = f"{project}/app", "cyclomatic complexity"
    unresolved = "relative import '.missing' names 'app.missing', which is not an analyzed module"
    assert findings(document) == [
        ("unused-import", f"{app}/__init__.py", 1, "'.models' imported but unused"),
        ("complex-function", f"{app}/branchy.py", 1, f"branchy has {complexity} 5 (threshold 4)"),
        ("unused-import", f"{app}/models.py", 1, "'os' imported but unused"),
        ("import-cycle", f"{app}/models.py", 3, "import cycle of 2 modules: app.models, app.views"),
        ("unused-import", f"{app}/models.py", 3, "'.views' imported but unused"),
        ("unused-import", f"{app}/views.py", 1, "'app.models' imported but unused"),
        ("unresolved-import", f"{app}/views.py", 2, f"{unresolved} or package"),
        ("unused-import", f"{app}/views.py", 2, "'.missing.thing' imported but unused"),
        ("syntax-error", f"{project}/broken.py", 1, "invalid syntax"),
    ]  # fmt: skip
    report = document["report"]
    assert (report["files"], report["functions"], report["import_edges"]) == (5, 2, 3)
    assert report["import_cycles"] == [["app.models", "app.views"]]
    assert report["findings_by_kind"] == {
        "syntax-error": 1,
        "unresolved-import": 1,
        "unused-import": 5,
        "import-cycle": 1,
        "complex-function": 1,
    }
    assert document["backend"]["name"] == dualmode_backend


def test_the_json_schema(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, document = run_json(capsys, str(project), "--backend", "serial", "--edit", "1")
    assert status == 0
    assert {"report", "runs", "backend", "cache"} <= document.keys()
    for finding in document["report"]["findings"]:
        assert finding.keys() == {"kind", "path", "line", "message"}
        assert finding["kind"] in {
            "syntax-error",
            "unresolved-import",
            "unused-import",
            "import-cycle",
            "complex-function",
        }
    first, edit = document["runs"]
    assert (first["kind"], edit["kind"]) == ("first", "edit")
    for run in document["runs"]:
        assert run.keys() == {"kind", "seconds", "executed", "green", "backdated"}
    assert 0 < edit["executed"] < first["executed"]
    assert edit["green"] > 0
    assert document["backend"]["reason"] == "--backend"


def test_edit_reexecutes_only_the_edited_file_and_the_tree_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        f"pkg/m{i}.py": f"import os\n\n\ndef f{i}(x):\n    return os.sep * x\n" for i in range(40)
    }
    files["pkg/__init__.py"] = ""
    root = write_tree(tmp_path, files)
    status, document = run_json(capsys, str(root), "--backend", "serial", "--edit", "1")
    assert status == 0
    first, edit = document["runs"]
    # parse, file_facts, its 3 projections, resolved_imports, file_findings of one file;
    # import_graph, import_cycles, report over the tree
    assert edit["executed"] <= 10 < first["executed"] / 20
    added = [f for f in findings(document) if "_dualmode_edit" in f[3]]
    assert len(added) == 1 and added[0][0] == "unused-import"


def test_compare_finds_every_backend_identical(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, document = run_json(capsys, str(project), "--compare", "--workers", "2")
    assert status == 0
    rows = document["compare"]
    assert rows[0]["backend"] == "serial"
    assert {r["backend"] for r in rows} >= {"serial", "threads", "processes"}
    assert all(r["identical"] for r in rows)


def test_compare_shows_a_difference_and_exits_1(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dualmode.analyze import cli

    honest = cli._report_json

    def tampered(outcome: Any) -> dict[str, Any]:
        report = honest(outcome)
        if outcome.db.backend.name == "threads":  # a backend that gets one count wrong
            report["functions"] += 1
        return report

    monkeypatch.setattr(cli, "_report_json", tampered)
    assert main(["analyze", str(project), "--compare", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "threads's report differs from serial's:" in captured.err
    assert '- "functions": 2,' in captured.err and '+ "functions": 3,' in captured.err
    assert "DIFFERENT" in captured.out


def test_the_rich_summary_and_the_profile(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(project), "--backend", "serial", "--profile", "--edit", "1"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "findings by kind",
        "most complex functions",
        "import cycles",
        "runs on serial",
    ):
        assert expected in out
    assert "query profile" in out and "file_facts" in out
    assert "% of first" in out and "edited in memory" in out


def test_auto_says_why_it_chose_its_backend(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUALMODE_BACKEND", raising=False)
    status, document = run_json(capsys, str(project))
    assert status == 0
    assert document["backend"]["reason"].startswith("auto (the default): ")


# -- bad input: a message naming the problem, and a documented exit status -------------------


def _missing(root: Path) -> list[str]:
    return [str(root / "nowhere")]


def _syntax_error(root: Path) -> list[str]:
    write_tree(root, {"ok.py": "import os\n", "bad.py": "x = = 1\n"})
    return [str(root)]


def _symbol_table_error(root: Path) -> list[str]:
    write_tree(root, {"ok.py": "import os\n", "bad.py": "import sys\nnonlocal x\n"})
    return [str(root)]


def _undecodable(root: Path) -> list[str]:
    write_tree(root, {"ok.py": "x = 1\n"})
    (root / "latin.py").write_bytes(b"s = '\xe9t\xe9'\n")
    return [str(root)]


def _unreadable(root: Path) -> list[str]:
    write_tree(root, {"ok.py": "x = 1\n"})
    (root / "gone.py").symlink_to(root / "deleted.py")  # unreadable whoever runs the test
    return [str(root)]


def _empty(root: Path) -> list[str]:
    write_tree(root, {"README.txt": "no Python here\n"})
    return [str(root)]


def _symlink_loop(root: Path) -> list[str]:
    write_tree(root, {"pkg/ok.py": "x = 1\n"})
    (root / "pkg" / "again").symlink_to(root / "pkg")  # pkg/again/again/... forever
    (root / "self.py").symlink_to(root / "self.py")
    return [str(root)]


BAD_INPUT: list[tuple[Callable[[Path], list[str]], int, list[str]]] = [
    (_missing, 2, ["nowhere: no such file or directory; give existing files or directories"]),
    (_syntax_error, 0, []),
    (_symbol_table_error, 0, []),
    (
        _undecodable,
        3,
        [
            "latin.py: cannot decode as utf-8 (byte 0xe9 at offset 5); not analyzed: save it as "
            "UTF-8 or declare its encoding (PEP 263)"
        ],
    ),
    (_unreadable, 3, ["gone.py: broken symlink (No such file or directory); not analyzed"]),
    (_empty, 4, ["no Python files under", "give a directory that holds .py files"]),
    (
        _symlink_loop,
        3,
        [
            "again: symlink loop (it leads back to a directory above it); not followed",
            "self.py: symlink loop (it resolves to itself); not followed",
        ],
    ),
]


@pytest.mark.parametrize(
    ("make", "status", "messages"), BAD_INPUT, ids=[make.__name__[1:] for make, _, _ in BAD_INPUT]
)
def test_bad_input(
    make: Callable[[Path], list[str]],
    status: int,
    messages: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    paths = make(root)
    assert main(["analyze", "--backend", "serial", "--no-progress", "--json", *paths]) == status
    captured = capsys.readouterr()
    for message in messages:
        assert message in captured.err
    if status in (0, 3):  # the rest was analyzed: the report lists it
        report = json.loads(captured.out)["report"]
        assert report["files"] >= 1
        assert len(report["skipped"]) == len(messages)
    if make in (_syntax_error, _symbol_table_error):  # a finding, not a failure
        report = json.loads(captured.out)["report"]
        assert report["findings_by_kind"]["syntax-error"] == 1
        assert report["findings_by_kind"]["unused-import"] == 1  # ok.py still analyzed


def test_an_unreadable_file_by_its_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    write_tree(tmp_path, {"ok.py": "x = 1\n", "secret.py": "y = 2\n"})
    (tmp_path / "secret.py").chmod(0)
    assert main(["analyze", "--backend", "serial", "--no-progress", str(tmp_path)]) == 3
    assert "secret.py: cannot read (Permission denied); not analyzed" in capsys.readouterr().err


def test_an_unknown_backend_names_the_choices(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(project), "--backend", "nope"]) == 2
    assert "unknown backend 'nope'; choose from: auto, " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--edit", "-1"], "--edit must be 0 or a positive integer"),
    ],
)
def test_bad_counts_are_usage_errors(
    argv: list[str], message: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(project), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_workers_variable_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALMODE_WORKERS", "many")
    assert main(["analyze", str(project), "--backend", "threads"]) == 2
    assert "DUALMODE_WORKERS='many' is not a worker count" in capsys.readouterr().err


# -- the analyses -----------------------------------------------------------------------------


def test_strongly_connected_components() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["f"]}
    assert strongly_connected(graph) == (("a", "b", "c"), ("d", "e"))


def test_relative_imports_resolve_against_the_package() -> None:
    known = module_names(["pkg", "pkg.sub", "pkg.sub.mod", "pkg.other"])
    stmts = [
        ImportStatement(1, "", 1, ("x",), True),  # from . import x: a name of pkg.sub
        ImportStatement(2, "other", 2, ("x",), True),  # from ..other import x
        ImportStatement(3, "", 3, ("y",), True),  # from ... import y: above the top
    ]
    resolved = resolve_imports("pkg/sub/mod.py", "pkg.sub.mod", False, stmts, known)
    assert resolved.edges == (("pkg.other", 2), ("pkg.sub", 1))
    assert [f.line for f in resolved.unresolved] == [3]
    assert "climbs above the top-level package" in resolved.unresolved[0].message


# Each snippet exercises one of pyflakes' rules for "imported but unused".
SNIPPETS = {
    "plain": "import os\nimport sys\nprint(sys)\n",
    "alias": "import os.path as osp\nimport json as json\nimport a.b as b\n",
    "submodule": "import os.path\nimport xml.dom\nxml.dom\n",
    "from": "from os import path, sep as separator\nfrom . import sibling\nfrom .. import up\n",
    "star_unused": "from os import *\n",
    "star_used": "from os import *\nprint(getcwd())\n",
    "all": "import os, sys\n__all__ = ['os']\n__all__ += ['sys']\n",
    "future": "from __future__ import annotations\n",
    "rebound": "try:\n    import json\nexcept ImportError:\n    json = None\n",
    "rebound_before": "json = None\ntry:\n    import json\nexcept ImportError:\n    pass\n",
    "twice": "import os\nimport os\n",
    "function": "def f():\n    import os\n    import sys\n    return sys\n",
    "nested_use": "import os\ndef f():\n    def g():\n        return os\n    return g\n",
    "closure": "def f():\n    import os\n    def g():\n        return os\n    return g\n",
    "class_scope": "class C:\n    import os\n",
    "global": "def f():\n    global os\n    import os\n",
    "annotation": "from typing import List, Dict\ndef f(x: 'List[int]') -> None:\n    y: 'Dict'\n",
    "future_annotation": (
        "from __future__ import annotations\nfrom typing import Any\ndef f(x: Any): ...\n"
    ),
    "postponed_shadow": (
        "from __future__ import annotations\nfrom . import console\n"
        "class R:\n    console: console.Console\n"
    ),
    "shadow_unpostponed": "from . import console\nclass R:\n    console: console.Console\n",
    "alias_uses_submodule": (
        "import multiprocessing as mp\nimport multiprocessing.connection\nmp\n"
        "import os.path as osp\nimport os.path\nosp\n"
    ),
    "class_rebinds": (
        "from email import policy\nimport errno\nclass T:\n    policy = policy.default\n"
        "    def f(self):\n        class E:\n            errno = errno.EINVAL\n"
    ),
    "literal": "from typing import Literal\nimport os\nx: Literal['os'] = 'os'\n",
    "comprehension": "def f(xs):\n    import math\n    return [math.floor(x) for x in xs]\n",
    "module_comprehension": "import math\nys = [math.floor(x) for x in range(3)]\n",
    "decorator": "import functools\n@functools.cache\ndef f(): pass\n",
    "deleted": "import os\ndel os\n",
    "conditional": (
        "import sys\nif sys.platform == 'win32':\n    import ntpath as p\n"
        "else:\n    import posixpath as p\n"
    ),
    "def_replaces": "import os\ndef os(): pass\n",
    "loop": "import os\nfor os in range(3):\n    pass\n",
    "type_checking": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import Y\n"
        "def f(a: 'Y'): ...\n"
    ),
}


def pyflakes_unused(text: str, path: str) -> list[tuple[int, str]]:
    from pyflakes import api, messages

    class Collect:
        def __init__(self) -> None:
            self.found: list[Any] = []

        def flake(self, message: Any) -> None:
            self.found.append(message)

        def unexpectedError(self, *args: Any) -> None:
            raise AssertionError(args)

        syntaxError = unexpectedError

    collect = Collect()
    api.check(text, path, collect)  # type: ignore[arg-type]
    return sorted(
        (m.lineno, m.message % m.message_args)
        for m in collect.found
        if isinstance(m, messages.UnusedImport)
    )


def ours(text: str, path: str) -> list[tuple[int, str]]:
    tree = parse_module(text, path).tree
    assert tree is not None
    return sorted((f.line, f.message) for f in unused_imports(tree, text, path))


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_unused_imports_agree_with_pyflakes(name: str) -> None:
    pytest.importorskip("pyflakes")
    text = SNIPPETS[name]
    assert ours(text, f"{name}.py") == pyflakes_unused(text, f"{name}.py")


# Standard library modules; curses/__init__.py reads a name before importing it, where we
# differ on purpose (docs/analyze.md).
STDLIB_SAMPLE = [
    "concurrent/futures/process.py",
    "argparse.py",
    "ast.py",
    "asyncio/base_events.py",
    "collections/__init__.py",
    "ctypes/__init__.py",
    "datetime.py",
    "email/message.py",
    "http/client.py",
    "json/decoder.py",
    "logging/__init__.py",
    "os.py",
    "pathlib.py",
    "subprocess.py",
    "tomllib/_parser.py",
    "typing.py",
    "unittest/mock.py",
    "xml/dom/minidom.py",
]


@pytest.mark.parametrize("relpath", STDLIB_SAMPLE)
def test_unused_imports_agree_with_pyflakes_on_the_standard_library(relpath: str) -> None:
    pytest.importorskip("pyflakes")
    path = Path(sysconfig.get_paths()["stdlib"], relpath)
    if not path.exists():
        pytest.skip(f"no {relpath} in this standard library")
    text = path.read_text(encoding="utf-8")
    assert ours(text, str(path)) == pyflakes_unused(text, str(path))


# -- --watch ----------------------------------------------------------------------------------


def _watch_argv(root: Path, how: str, backend: str) -> list[str]:
    argv = [sys.executable, "-m", "dualmode", "analyze", str(root), "--watch", "--no-progress"]
    return [*argv, "--backend", backend, *(["--poll", "0.2"] if how == "poll" else [])]


def _read_until(lines: queue.Queue[str], wanted: str, seconds: float) -> list[str]:
    """The lines read up to the first that contains *wanted*; fails after *seconds*."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        got.append(line)
        if wanted in line:
            return got
    raise AssertionError(f"no line with {wanted!r} within {seconds} s; got:\n{''.join(got)}")


def _drain(lines: queue.Queue[str]) -> list[str]:
    """The lines read so far."""
    got = []
    with contextlib.suppress(queue.Empty):
        while True:
            got.append(lines.get(timeout=1))
    return got


def _lines_of(stream: IO[str]) -> queue.Queue[str]:
    """*stream*'s lines as a thread reads them (a read never blocks the test)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        # The test closes the pipe when it ends (Popen.__exit__), maybe mid-read.
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize(
    ("how", "backend"),
    [("poll", "serial"), ("poll", "threads"), ("poll", "processes"), ("watchfiles", "serial")],
)
def test_watch_prints_changed_findings_within_2_seconds(
    how: str, backend: str, tmp_path: Path
) -> None:
    if how == "watchfiles":
        pytest.importorskip("watchfiles")
    root = write_tree(tmp_path / "tree", {"pkg/__init__.py": "", "pkg/a.py": "import os\nos\n"})
    with subprocess.Popen(
        _watch_argv(root, how, backend),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT writes every thread's stack
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        lines = _lines_of(process.stdout)
        # stderr is read as it comes, so the command can never block on a full pipe
        errors = _lines_of(process.stderr)
        try:
            _read_until(lines, "watching 2 files", 60)
            time.sleep(0.3)  # let the watcher start
            (root / "pkg" / "a.py").write_text("import os\nimport json\nos\n", encoding="utf-8")
            start = time.monotonic()
            got = _read_until(lines, "+ /", 2.0)
            assert time.monotonic() - start < 2.0
            assert f"+ {root}/pkg/a.py:2: unused-import: 'json' imported but unused" in got[-1]
            (root / "pkg" / "a.py").write_text("import os\nos\n", encoding="utf-8")
            assert "'json' imported but unused" in _read_until(lines, "- /", 2.0)[-1]
            process.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGABRT)  # to see where it hangs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
                output = "".join(_drain(lines))
                stacks = "".join(_drain(errors))
                pytest.fail(f"running 30 s after Ctrl-C; stdout:\n{output}\nstderr:\n{stacks}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    err = "".join(_drain(errors))
    assert process.returncode == 0, err
    _read_until(lines, "stopped watching", 5)
    assert "Traceback" not in err
