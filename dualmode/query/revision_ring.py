"""What the job table keeps per revision, for the last few revisions, in slots made once.

The verdicts counted for ``db.stats().revisions`` and the keys marked dirty in each revision
(for ``JobTable.changes``) are only asked about for recent revisions. Kept as dicts of
revision -> value, made on first use, whose oldest entry was deleted at each new revision,
they stayed bounded in count but not in memory: with 64 shards, the (shard, revision)
entries that had existed grew for hundreds of revisions, and the dicts' hash tables grew and
shrank with the churn, so a database's memory rose ~20% after its first 100 revisions. Here
every slot is made up front and reused for the revision ``size`` later.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["RevisionCounts", "RevisionLists"]

T = TypeVar("T")


class RevisionCounts:
    """*width* counters per revision, for the last *size* revisions, in machine ints (an
    array: a list would keep an int object per revision and count, made as they grow), a
    revision sharing its slot with those *size* apart (the newest one keeps it). Not locked:
    the caller serializes its uses."""

    __slots__ = ("_counts", "_revisions", "_width")

    def __init__(self, size: int, width: int) -> None:
        self._width = width
        self._revisions = array("q", bytes(8 * size))
        self._counts = array("q", bytes(8 * size * width))

    def add(self, revision: int, counter: int) -> None:
        """Add one to *counter* of *revision*, whose slot is emptied first if it held an
        older revision's counts."""
        i = revision % len(self._revisions)
        start = i * self._width
        if self._revisions[i] != revision:
            self._revisions[i] = revision
            for j in range(start, start + self._width):
                self._counts[j] = 0
        self._counts[start + counter] += 1

    def items(self, oldest: int) -> Iterator[tuple[int, list[int]]]:
        """Each revision from *oldest* on that has counts, with them."""
        width = self._width
        for i, revision in enumerate(self._revisions):
            if revision >= oldest and revision:
                yield revision, self._counts[i * width : (i + 1) * width].tolist()


class RevisionLists(Generic[T]):
    """A list per revision, for the last *size* revisions (a revision shares its slot with
    those *size* apart). :meth:`start` empties a revision's list before anything is added
    to it; :meth:`get` reads it. Appends may come from any thread (``list.append`` is
    atomic); :meth:`start` must not race with them."""

    __slots__ = ("_lists", "_revisions")

    def __init__(self, size: int) -> None:
        self._revisions = array("q", bytes(8 * size))
        self._lists: list[list[T]] = [[] for _ in range(size)]

    def start(self, revision: int) -> None:
        i = revision % len(self._revisions)
        self._lists[i].clear()
        self._revisions[i] = revision

    def add(self, revision: int, item: T) -> None:
        """Append *item* to the list of *revision* (started: see :meth:`start`)."""
        listed = self.get(revision)
        if listed is not None:
            listed.append(item)

    def get(self, revision: int) -> list[T] | None:
        """The list of *revision*, or None if its slot now holds another revision's."""
        i = revision % len(self._revisions)
        return self._lists[i] if self._revisions[i] == revision else None
