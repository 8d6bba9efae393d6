"""Which files to analyze: the Python files under the paths given, their module names, and
their text.

Discovery follows directory symlinks but never into a directory it is already inside (a
symlink loop is reported as a :class:`Problem`, not followed). Reading decodes as Python
does (PEP 263 coding cookie, else UTF-8); a file that cannot be read or decoded is a
:class:`Problem` too, and the rest of the tree is analyzed.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import sysconfig
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_EXCLUDES",
    "STDLIB_EXCLUDES",
    "Problem",
    "SourceFile",
    "SourceTree",
    "describe_read_error",
    "discover",
    "read_source",
    "stdlib_path",
]

# Never analyzed: caches, hidden directories, installed third-party packages.
DEFAULT_EXCLUDES = ("__pycache__", ".*", "site-packages", "dist-packages")
# Also left out of the default run on the standard library: its test suites.
STDLIB_EXCLUDES = ("test", "tests", "idle_test", "test_*.py")


@dataclass(frozen=True, order=True)
class SourceFile:
    """A file to analyze: its path as shown in reports, and its dotted module name (``pkg``
    for ``pkg/__init__.py``)."""

    path: str
    module: str

    @property
    def is_package(self) -> bool:
        return os.path.basename(self.path) == "__init__.py"


@dataclass(frozen=True, order=True)
class Problem:
    """A path that could not be analyzed, and why (one line, saying what to do)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class SourceTree:
    """What :func:`discover` found: the files, sorted by path, and the paths it skipped."""

    files: tuple[SourceFile, ...]
    problems: tuple[Problem, ...]


def stdlib_path() -> str:
    """The running interpreter's standard library directory."""
    return sysconfig.get_paths()["stdlib"]


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _package_root(directory: str) -> str:
    """The first directory above *directory* (or itself) that is not a package: module names
    are relative to it, so ``dualmode/query`` gives ``dualmode.query.runtime``."""
    root = os.path.abspath(directory)
    while os.path.isfile(os.path.join(root, "__init__.py")):
        parent = os.path.dirname(root)
        if parent == root:
            break
        root = parent
    return root


def _module_name(path: str, root: str) -> str:
    rel = os.path.relpath(os.path.abspath(path), root)
    parts = rel[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or os.path.basename(root)


def _link_problem(path: str) -> Problem | None:
    """Why *path*, a symlink, cannot be followed, if it cannot."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Problem(path, "symlink loop (it resolves to itself); not followed")
        return Problem(path, f"broken symlink ({exc.strerror}); not analyzed")
    return None


def discover(paths: Iterable[str], exclude: Sequence[str] = DEFAULT_EXCLUDES) -> SourceTree:
    """The ``.py`` files under *paths* (files or directories), skipping names that match a
    pattern of *exclude* (fnmatch, matched against each file and directory name).

    Raises FileNotFoundError, naming the path, for a path that does not exist; every other
    trouble is a :class:`Problem` of the result.
    """
    files: dict[str, SourceFile] = {}
    problems: list[Problem] = []
    for given in paths:
        if not os.path.lexists(given):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", given)
        if os.path.islink(given) and (problem := _link_problem(given)) is not None:
            problems.append(problem)
        elif os.path.isdir(given):
            root = _package_root(given)
            _walk(given, root, exclude, set(), files, problems)
        else:
            root = _package_root(os.path.dirname(os.path.abspath(given)))
            files.setdefault(given, SourceFile(given, _module_name(given, root)))
    return SourceTree(tuple(sorted(files.values())), tuple(sorted(problems)))


def _walk(
    directory: str,
    root: str,
    exclude: Sequence[str],
    inside: set[tuple[int, int]],
    files: dict[str, SourceFile],
    problems: list[Problem],
) -> None:
    """Add the files under *directory*; *inside*: the (device, inode) of the directories
    this walk is inside, so that a symlink back to one of them is a loop, not followed."""
    try:
        info = os.stat(directory)
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        problems.append(Problem(directory, f"cannot list this directory ({exc.strerror})"))
        return
    ident = (info.st_dev, info.st_ino)
    if ident in inside:
        problems.append(
            Problem(directory, "symlink loop (it leads back to a directory above it); not followed")
        )
        return
    inside.add(ident)
    for entry in entries:
        if _excluded(entry.name, exclude):
            continue
        path = os.path.join(directory, entry.name)
        if entry.is_symlink() and (problem := _link_problem(path)) is not None:
            if entry.name.endswith(".py") or not os.path.splitext(entry.name)[1]:
                problems.append(problem)
        elif entry.is_dir():
            _walk(path, root, exclude, inside, files, problems)
        elif entry.name.endswith(".py") and entry.is_file():
            files.setdefault(path, SourceFile(path, _module_name(path, root)))
    inside.discard(ident)


def read_source(path: str) -> str:
    """The text of the Python file *path*, decoded as Python decodes it (its PEP 263 coding
    cookie, else UTF-8), with universal newlines.

    Raises OSError when it cannot be read and UnicodeError (ValueError) when it cannot be
    decoded; :func:`describe_read_error` words either for a report.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        if "invalid or missing encoding declaration" not in str(exc):
            raise UnicodeError(str(exc)) from None  # an unknown coding cookie
        encoding = "utf-8"  # not UTF-8 in its first lines: decoding says where
    text = data.decode(encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def describe_read_error(exc: Exception) -> str:
    """What :func:`read_source`'s *exc* means for the user, and what to do."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"cannot decode as {exc.encoding} (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); not analyzed: save it as UTF-8 or declare its encoding (PEP 263)"
        )
    if isinstance(exc, UnicodeError):
        return f"cannot decode: {exc}; not analyzed"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop (it resolves to itself); not followed"
    strerror = exc.strerror if isinstance(exc, OSError) else None
    return f"cannot read ({strerror or exc}); not analyzed"
