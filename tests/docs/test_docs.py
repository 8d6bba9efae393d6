"""Every code block of README.md and docs/*.md runs (conftest.py here says how each kind of
block is proved): the pages in ``EVERY_BACKEND`` once per backend, the others once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import DocBlock


def test_block(doc_block: DocBlock) -> None:
    doc_block.run()


def test_block_on_every_backend(doc_block: DocBlock, dualmode_backend: str) -> None:
    doc_block.run()
