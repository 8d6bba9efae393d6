"""``dualmode analyze``: a parallel, incremental Python code analyzer built on dualmode's
query engine (:class:`Analysis`), an ordinary user of the public API.

One module per concept: ``files`` (what to analyze, reading it), ``parse``, ``symbols``,
``imports`` (resolution), ``cycles``, ``complexity``, ``unused`` (pyflakes-compatible unused
imports), ``findings``, ``queries`` (the database), ``runs`` (first and edit runs),
``report``, ``edits`` (``--edit``), ``watch`` (``--watch``), ``summary`` (the rich output)
and ``cli``.
"""

from __future__ import annotations

from .files import Problem, SourceFile, SourceTree, discover, read_source
from .findings import KINDS, Finding
from .queries import LAYOUT, Analysis
from .report import Report

__all__ = [
    "KINDS",
    "LAYOUT",
    "Analysis",
    "Finding",
    "Problem",
    "Report",
    "SourceFile",
    "SourceTree",
    "discover",
    "read_source",
]
