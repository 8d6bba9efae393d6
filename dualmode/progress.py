"""Progress of a parallel call: ``progress=True`` draws on stderr, a callable is told.

``par_map(fn, items, progress=True)`` draws a rich progress bar on stderr when rich is installed
(the ``bench`` extra), else a plain text line; ``progress=callback`` calls ``callback(done,
total)`` with item counts as chunks finish, on the calling thread. Progress is reported by the
caller as it collects chunks, so it costs the workers nothing on any backend.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Protocol

__all__ = ["Progress", "Reporter"]

# What a parallel call's ``progress=`` takes.
Progress = bool | Callable[[int, int], object]


class _Display(Protocol):
    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


class _RichBar:
    """A rich progress bar on stderr; ImportError when rich is not installed."""

    def __init__(self, description: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def update(self, done: int) -> None:
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        self._bar.stop()


class _TextLine:
    """Progress as plain text, for when rich is not installed: ``fn: 40/100 items (40%)``.

    On a terminal one line is redrawn in place; on a pipe or a log file a line is written at
    each tenth of the items, so a log gets at most 11 lines however many chunks finish.
    """

    def __init__(self, description: str, total: int, stream: IO[str]) -> None:
        self._description = description
        self._total = total
        self._stream = stream
        self._tty = stream.isatty()
        self._tenths_shown = -1

    def update(self, done: int) -> None:
        percent = 100 * done // self._total if self._total else 100
        line = f"{self._description}: {done}/{self._total} items ({percent}%)"
        if self._tty:
            self._stream.write(f"\r{line}")
        elif percent // 10 > self._tenths_shown:
            self._tenths_shown = percent // 10
            self._stream.write(f"{line}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


class Reporter:
    """Reports ``(done, total)`` items to a callable, or draws progress on stderr.

    ``progress=True`` draws a rich bar when rich is installed, else a plain text line: a
    progress display is never the reason a long computation fails to start, so a missing
    optional dependency costs the looks of the bar, not the run.
    """

    def __init__(self, progress: Progress, total: int, description: str) -> None:
        self._callback: Callable[[int, int], object] | None = None
        self._display: _Display | None = None
        self._done = 0
        self._total = total
        if callable(progress):
            self._callback = progress
        elif progress:
            try:
                self._display = _RichBar(description, total)
            except ImportError:
                if sys.stderr is not None:  # None under pythonw: nowhere to draw
                    self._display = _TextLine(description, total, sys.stderr)
        self.advance(0)

    def advance(self, items: int) -> None:
        self._done += items
        if self._callback is not None:
            self._callback(self._done, self._total)
        elif self._display is not None:
            self._display.update(self._done)

    def close(self) -> None:
        if self._display is not None:
            self._display.close()
