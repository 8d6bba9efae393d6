"""The doc tests: every code block of README.md and docs/*.md runs, read by Sybil.

Sybil (https://sybil.readthedocs.io) finds the blocks and evaluates them; this file says how
each kind of block is proved, and hands the blocks to pytest as parameters of the two tests
in ``test_docs.py``. How a block runs is decided by its language and its content:

- ``python``: run in the page's namespace, which every block of the page shares
  (a class defined in one block is used in the next), with ``__name__ == "__main__"``.
  Two kinds run in a fresh interpreter instead, as a user runs them:

  - a block with an ``if __name__ == "__main__":`` guard is a script: it is written to a file
    and run by ``python FILE``, so that the workers the ``processes`` backend spawns import it
    as ``__mp_main__``, as they import a user's script;
  - a block that defines ``test_*`` functions is a test file: it runs under ``python -m
    pytest``, with dualmode's plugin.

  Both must be complete programs (they see nothing of the page's namespace) and must exit 0.
- ``console``: each command that runs the ``dualmode`` CLI is run, from a temporary
  directory, and must exit 0. Any other command is not run, for the reason ``NOT_RUN`` gives
  (it installs packages, builds CPython, runs a whole suite: CI runs those itself); a block
  none of whose commands runs is reported as skipped with those reasons. A command that
  ``NOT_RUN`` does not know fails the test: decide whether it is cheap and safe to run.
- ``toml``: parsed (``tomllib``); it must be valid.
- ``text``: output, layouts, protocols: prose, never run.
- any other language (or none): fails the test, so that no block goes unchecked by accident.
- ``<!-- skip: next "reason" -->`` (Sybil's directive) before a block: not run, reported as
  skipped with the reason. ``<!-- invisible-code-block: python -->`` comments hold code that
  runs in the namespace but is not shown (setup, or an ``assert`` that proves a claim).

A page runs once, under the backend the environment selects, or, for the pages in
``EVERY_BACKEND`` (their examples use the backend in force, and claim the same results on
each), once per backend through the ``dualmode_backend`` fixture: in-process blocks run under
``dm.use(name)``, fresh interpreters get ``DUALMODE_BACKEND=name``.

The process-wide default (``dm.configure``) is reset after every block: blocks share names, not
configuration. Selecting one block (``-k "docs/queries.md:120"``) first runs the blocks above it
on the same page, which it may depend on.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import unittest
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

import dualmode as dm

ROOT = Path(__file__).resolve().parents[2]

# Pages whose examples use the backend in force: each runs once per backend.
EVERY_BACKEND = frozenset(
    {"README.md", "docs/parallel.md", "docs/primitives.md", "docs/queries.md"}
)

# Languages with a meaning here (see the module docstring); any other fails its test.
KNOWN_LANGUAGES = ("python", "console", "toml", "text")

# Console commands that are run: the installed dualmode CLI only.
RUN = ("dualmode",)
# Console commands that are not run, by their first words, and why.
NOT_RUN: dict[tuple[str, ...], str] = {
    ("python3", "-m", "pip"): "installs packages (the doc tests use the installed package)",
    ("python3", "-m", "venv"): "creates a virtual environment",
    (".",): "activates a virtual environment in the calling shell",
    ("python3", "-m", "pytest"): "runs a test suite (.ci/run runs the README's test command)",
    ("nox",): "runs nox sessions, each in virtual environments of its own (.ci/run runs them)",
    ("scripts/provision-python3.13t.sh",): "builds CPython as root (.ci/run runs it first)",
}

# A fresh interpreter that runs longer than this has hung (pytest-timeout gives up at 120 s).
SUBPROCESS_TIMEOUT = 90.0


class Page(Document):
    """A page as Sybil parses it, with where and on which backend its blocks run."""

    relpath: str = ""
    backend: str | None = None  # None: whatever the environment selects
    workdir: Path = Path()


def _page_of(example: Example) -> Page:
    document = example.document
    assert isinstance(document, Page), document
    return document


def _where(example: Example) -> str:
    return f"{_page_of(example).relpath}:{example.line}"


# -- python blocks -----------------------------------------------------------------------------


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``, the guard that makes a block a script."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    operands = [test.left, *test.comparators]
    return (
        len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands)
        and any(isinstance(o, ast.Constant) and o.value == "__main__" for o in operands)
    )


def _defines_tests(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        for node in tree.body
    )


def _environment(page: Page) -> dict[str, str]:
    env = dict(os.environ)
    if page.backend is not None:
        env["DUALMODE_BACKEND"] = page.backend
    return env


def _run(example: Example, argv: list[str], what: str) -> str:
    """Run *argv* from the page's work directory; fail unless it exits 0; return its output."""
    page = _page_of(example)
    # A session of its own, so that a hung run is killed with every process it started.
    with subprocess.Popen(
        argv,
        cwd=page.workdir,
        env=_environment(page),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(
                f"{_where(example)}: {what} did not finish in {SUBPROCESS_TIMEOUT:.0f} s "
                f"(a hang?); its output:\n{output}",
                pytrace=False,
            )
    if process.returncode != 0:
        pytest.fail(
            f"{_where(example)}: {what} exited with status {process.returncode}; "
            f"its output:\n{output}",
            pytrace=False,
        )
    return output


def _padded(example: Example) -> str:
    """The block's source, its line numbers the page's: errors and tracebacks point there."""
    return "\n" * (example.line + example.parsed.line_offset) + str(example.parsed)


def _write(example: Example, name: str) -> Path:
    path = _page_of(example).workdir / name
    path.write_text(_padded(example), encoding="utf-8")
    return path


def _file_stem(example: Example) -> str:
    stem = Path(_page_of(example).relpath).stem.lower().replace("-", "_")
    return f"{stem}_line{example.line}"


def run_script(example: Example) -> None:
    path = _write(example, f"{_file_stem(example)}.py")
    _run(example, [sys.executable, str(path)], f"the script {path.name}")


def run_test_file(example: Example) -> None:
    path = _write(example, f"test_{_file_stem(example)}.py")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    _run(example, argv, f"pytest {path.name}")


_in_process = PythonEvaluator()


def _python_kind(example: Example) -> str:
    """How a python block runs: "script", "tests" (fresh interpreters) or "namespace"."""
    tree = ast.parse(_padded(example), filename=example.path)
    if any(_is_main_guard(node) for node in tree.body):
        return "script"
    if _defines_tests(tree):
        return "tests"
    return "namespace"


def evaluate_python(example: Example) -> None:
    __tracebackhide__ = True
    kind = _python_kind(example)
    if kind == "script":
        run_script(example)
    elif kind == "tests":
        run_test_file(example)
    else:
        _in_process(example)


def uses_namespace(example: Example) -> bool:
    """Whether *example* runs in its page's namespace, where later blocks may depend on it.

    Sybil's doctest regions (python blocks of ``>>>`` lines) do too."""
    evaluator = example.region.evaluator
    if evaluator is evaluate_python:
        return _python_kind(example) == "namespace"
    return not isinstance(evaluator, Skipper) and evaluator not in STANDALONE


class PythonBlocks(PythonCodeBlockParser):
    """Sybil's Python parser (code blocks, doctests, invisible blocks) with our evaluator."""

    def __init__(self) -> None:
        super().__init__()
        self.codeblock_parser = CodeBlockParser("python", evaluate_python)


# -- console, toml and unknown blocks ----------------------------------------------------------


def _commands(source: str) -> Iterator[list[str]]:
    """The commands of a console block: one a line, ``$ `` prompts and ``# comments`` removed,
    ``a && b`` split in two."""
    for line in source.splitlines():
        line = line.strip().removeprefix("$ ")
        words: list[str] = []
        for word in shlex.split(line, comments=True):
            if word == "&&":
                yield words
                words = []
            else:
                words.append(word)
        if words:
            yield words


def _not_run_reason(argv: list[str]) -> str | None:
    for prefix, reason in NOT_RUN.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return reason
    return None


def run_console(example: Example) -> None:
    runnable: list[list[str]] = []
    not_run: dict[str, list[str]] = {}  # reason: the commands not run for it
    for argv in _commands(str(example.parsed)):
        if argv[0] in RUN:
            runnable.append(argv)
            continue
        reason = _not_run_reason(argv)
        if reason is None:
            pytest.fail(
                f"{_where(example)}: the doc tests do not know whether `{shlex.join(argv)}` "
                "is cheap and safe to run: add it to RUN or NOT_RUN in tests/docs/conftest.py",
                pytrace=False,
            )
        not_run.setdefault(reason, []).append(f"`{shlex.join(argv)}`")
    cli = shutil.which("dualmode", path=str(Path(sys.executable).parent)) or shutil.which(
        "dualmode"
    )
    for argv in runnable:
        if cli is None:
            pytest.fail(f"{_where(example)}: no `dualmode` command installed", pytrace=False)
        _run(example, [cli, *argv[1:]], f"`{shlex.join(argv)}`")
    if not runnable:
        raise unittest.SkipTest(
            "not run: " + "; ".join(f"{', '.join(cmds)}: {why}" for why, cmds in not_run.items())
        )


def check_toml(example: Example) -> None:
    tomllib.loads(str(example.parsed))


class UnknownLanguageBlocks:
    """A parser for the fenced blocks no other parser takes: each fails its test."""

    def __init__(self) -> None:
        other = "|".join(KNOWN_LANGUAGES)
        self.lexer = FencedCodeBlockLexer(language=rf"(?!(?:{other})$)[^\n]*")

    def __call__(self, document: Document) -> Iterator[Region]:
        for region in self.lexer(document):
            region.parsed = region.lexemes["language"]
            region.evaluator = self.evaluate
            yield region

    @staticmethod
    def evaluate(example: Example) -> None:
        pytest.fail(
            f"{_where(example)}: a code block in language {str(example.parsed)!r}: write "
            f"```python (it runs), ```console (its dualmode commands run), ```toml or ```text",
            pytrace=False,
        )


# Evaluators of blocks that do not touch the page's namespace.
STANDALONE: tuple[object, ...] = (run_console, check_toml, UnknownLanguageBlocks.evaluate)

DOCS = Sybil(
    parsers=[
        SkipParser(),
        PythonBlocks(),
        CodeBlockParser("console", run_console),
        CodeBlockParser("toml", check_toml),
        UnknownLanguageBlocks(),
    ],
    path=str(ROOT),
    patterns=["README.md", "docs/*.md"],
    document_types={".md": Page},
)


def pages() -> list[Path]:
    candidates = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md")]
    return sorted(p for p in candidates if DOCS.should_parse(p))


# -- the blocks as pytest parameters -----------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One code block of a page: the *index*-th of Sybil's examples there, at *line*."""

    relpath: str
    index: int
    line: int

    def __str__(self) -> str:
        return f"{self.relpath}:{self.line}"


def _is_directive(example: Example) -> bool:
    return isinstance(example.region.evaluator, Skipper)


def blocks(path: Path) -> list[Block]:
    relpath = path.relative_to(ROOT).as_posix()
    examples = DOCS.parse(path).examples()
    return [
        Block(relpath, index, example.line)
        for index, example in enumerate(examples)
        if not _is_directive(example)
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "doc_block" not in metafunc.fixturenames:
        return
    every_backend = "dualmode_backend" in metafunc.fixturenames
    params = [
        block
        for path in pages()
        if (path.relative_to(ROOT).as_posix() in EVERY_BACKEND) == every_backend
        for block in blocks(path)
    ]
    metafunc.parametrize("doc_block", params, ids=str, indirect=True)


@dataclass(repr=False)
class PageRun:
    """One page's run on one backend: its namespace and how far its blocks have run."""

    page: Page
    examples: list[Example]
    done: int = 0  # examples evaluated so far, in page order
    failed: int | None = None  # the line of the block that failed, if one did

    @classmethod
    def start(cls, relpath: str, backend: str | None, workdir: Path) -> PageRun:
        page = DOCS.parse(ROOT / relpath)
        assert isinstance(page, Page)
        page.relpath, page.backend, page.workdir = relpath, backend, workdir
        page.namespace["__name__"] = "__main__"  # as in a user's script or notebook
        return cls(page, list(page.examples()))

    def run_through(self, block: Block) -> None:
        """Evaluate *block*, after the page's blocks above it if they have not run yet.

        A block that fails in the namespace makes the later namespace blocks of the page skip
        (they would fail for its sake); blocks that run on their own still run."""
        __tracebackhide__ = True
        target = self.examples[block.index]
        if self.failed is not None and uses_namespace(target):
            pytest.skip(f"{block}: needs the block at line {self.failed} above, which failed")
        while self.done < block.index:  # a selection (-k) that left out earlier blocks
            earlier = self.examples[self.done]
            try:
                self._evaluate(earlier)
            except unittest.SkipTest:
                pass
            except BaseException as exc:
                if uses_namespace(earlier):
                    exc.add_note(f"(in the block at line {earlier.line}, which {block} follows)")
                    raise
        try:
            self._evaluate(target)
        except unittest.SkipTest as skip:
            pytest.skip(f"{block}: {skip}")

    def _evaluate(self, example: Example) -> None:
        __tracebackhide__ = True
        self.done += 1
        try:
            example.evaluate()
        except unittest.SkipTest:
            raise
        except BaseException:
            if uses_namespace(example):
                self.failed = example.line
            raise
        finally:
            dm.configure()  # blocks share names, not the process-wide default


@pytest.fixture(scope="session")
def _page_runs() -> dict[tuple[str, str | None], PageRun]:
    """Each page's run, by (page, backend): the blocks of one run share its namespace."""
    return {}


@dataclass(frozen=True)
class DocBlock:
    """A block bound to its page's run on the backend of the test that asked for it."""

    block: Block
    page_run: PageRun

    def __repr__(self) -> str:
        return f"<DocBlock {self.block} on {self.page_run.page.backend or 'the default backend'}>"

    def run(self) -> None:
        __tracebackhide__ = True
        self.page_run.run_through(self.block)


@pytest.fixture
def doc_block(
    request: pytest.FixtureRequest,
    _page_runs: dict[tuple[str, str | None], PageRun],
    tmp_path_factory: pytest.TempPathFactory,
) -> DocBlock:
    """The test's block (its parameter), in its page's namespace on the test's backend."""
    block = request.param
    assert isinstance(block, Block)
    backend: str | None = None
    if "dualmode_backend" in request.fixturenames:
        backend = request.getfixturevalue("dualmode_backend")
    key = (block.relpath, backend)
    page_run = _page_runs.get(key)
    if page_run is None or page_run.done > block.index:  # the page's first block, or a rerun
        name = f"{Path(block.relpath).stem}-{backend or 'env'}"
        page_run = PageRun.start(block.relpath, backend, tmp_path_factory.mktemp(name))
        _page_runs[key] = page_run
    return DocBlock(block, page_run)
