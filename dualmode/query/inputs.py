"""``dm.input()``: the values a database's queries read, set from outside.

Reading an input records a dependency edge of the query that reads it; setting one starts a
new revision (see ``docs/architecture.md#the-query-protocol``). The values live in the
database's job table, so every process of the processes backend reads the same ones.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from .job_table import InputState
from .memo import HIGH, LOW, Durability
from .runtime import Runtime

if TYPE_CHECKING:
    from .database import Database

__all__ = ["input"]

SET, UNSET, STALE = InputState.SET, InputState.UNSET, InputState.STALE  # see job_table


class _InputMap:
    """``db.source[key]``: values set from outside; reading one records a dependency.

    Setting one starts a new revision.
    """

    __slots__ = ("_name", "_rt")

    def __init__(self, rt: Runtime, name: str) -> None:
        self._rt = rt
        self._name = name

    def __getitem__(self, key: Hashable) -> Any:
        state, value = self._read(key)
        if state is UNSET:
            raise KeyError(
                f"input {self._name!r} has no value for {key!r}; set it first "
                f"(db.{self._name}[{key!r}] = ...)"
            )
        return value

    def __contains__(self, key: Hashable) -> bool:
        """Whether the input at *key* is set. In a query, a dependency as a read is: the
        query re-executes when the key is set later."""
        return self._read(key)[0] is SET

    def _read(self, key: Hashable) -> tuple[InputState, Any]:
        """``(SET, value)`` or ``(UNSET, None)`` in the calling thread's revision, recorded
        as a dependency of the running query. Raises Cancelled in a query whose revision is
        over (between queries, the thread moves to the current revision)."""
        rt = self._rt
        thread = rt.thread()
        frame = thread.stack[-1] if thread.stack else None
        if frame is not None:
            frame.deps.append((self._name, (key,)))
        while True:
            state, value, changed_at, durability = rt.table.get_input(
                self._name, key, thread.revision
            )
            if state is not STALE:
                break
            rt.stale(thread, changed_at)  # in a query: raises Cancelled
        if frame is not None and durability < frame.durability:
            frame.durability = durability
        return state, value

    def prefetch(self, keys: Iterable[Hashable]) -> None:
        """Fetch the values at *keys* ahead of reading them. On processes, in a process
        other than the database's owner, they come in one request (each read would be a
        round trip), kept for this revision; elsewhere this does nothing. Reading them still
        records each read, and raises KeyError for a key that is not set."""
        rt = self._rt
        rt.table.prefetch_inputs(self._name, list(keys), rt.thread().revision)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    def set(self, key: Hashable, value: Any, *, durability: Durability = Durability.LOW) -> None:
        """Set the input at *key*: a new revision starts. *durability*: how rarely this
        input changes (see :class:`~dualmode.Durability`). Raises RuntimeError inside a running
        query, or (processes) in a process other than the one that created the database."""
        rt = self._rt
        if rt.thread().stack:
            raise RuntimeError(
                f"input {self._name!r} set from inside a running query; inputs change only "
                "between queries, from outside"
            )
        if rt.table.shared and rt.db._home != os.getpid():
            raise RuntimeError(
                f"input {self._name!r} set in process {os.getpid()}: the inputs of a database on "
                f"the {rt.db.backend.name} backend are set in the process that created it "
                f"({rt.db._home}), which hands the new revision to the tasks it sends"
            )
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"input {self._name!r}: the key {key!r} is unhashable; use a hashable key "
                "(a str, tuple, frozenset...)"
            ) from None
        if not isinstance(durability, int) or not LOW <= durability <= HIGH:
            raise ValueError(
                f"durability must be a dualmode.Durability (LOW, MEDIUM or HIGH), not "
                f"{durability!r}"
            )
        rt.learn_revision(rt.table.set_input(self._name, key, value, int(durability)))

    def __repr__(self) -> str:
        return f"<input {self._name} of {self._rt.db!r}>"


class input:
    """Declare an input of a Database: ``source = dm.input()``; then ``db.source[k] = v``.

    Raises TypeError when read on an object that is not an initialized :class:`Database`, or
    subscripted on the class (inputs are per database)."""

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, db: Database | None, owner: type) -> Any:
        if db is None:
            return self
        rt = getattr(db, "_runtime", None)
        if not isinstance(rt, Runtime):
            raise TypeError(
                f"dm.input {self.name!r} read on a {type(db).__qualname__} that is not an "
                "initialized dm.Database: declare inputs on a subclass of dm.Database, and call "
                "super().__init__(...) in its __init__"
            )
        inputs = _InputMap(rt, self.name)
        db.__dict__[self.name] = inputs
        return inputs

    def _on_class(self, *args: Any) -> NoReturn:
        raise TypeError(
            f"dm.input {self.name!r} is subscripted on the class: inputs belong to each "
            f"database; set and read them on an instance (db = MyDatabase(); "
            f"db.{self.name}[key] = value)"
        )

    __getitem__ = __setitem__ = __contains__ = _on_class
