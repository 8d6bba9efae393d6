"""How query values travel between processes: as cloudpickle bytes inside a memo (plain
numbers, strings, bools and None as they are: ``_PLAIN``).

A database's job table lives in the process that created it (see ``.table_server``); the
other processes receive memos from it and publish memos to it with their values packed here,
so that lambdas, closures and classes made at run time travel as par_map's tasks do. A value
that cannot travel becomes a TypeError memo that says what to do, the same for the process
that computed it as for every other (``check_travels``): a result never depends on which
process computed it. See docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from __future__ import annotations

import pickle
from typing import Any, cast

import cloudpickle  # type: ignore[import-untyped]

from dualmode.query.memo import Memo, MemoState

__all__ = [
    "cannot_travel",
    "MemoFields",
    "check_travels",
    "memo_fields",
    "pack_entry",
    "pack_memo",
    "pack_memo_or_error",
    "pack_value",
    "packed_value",
    "unpack_entry",
    "unpack_fields",
    "unpack_memo",
    "unpack_value",
]

OK, ERROR, ERROR_ONCE = MemoState.OK, MemoState.ERROR, MemoState.ERROR_ONCE
_WITH_VALUE = (OK, ERROR, ERROR_ONCE)  # the states whose value is the user's (or its error)
# Values that travel as they are, inside the message or entry that carries their memo, not as
# bytes of their own: every process loads them, and a pickle of its own cost the publishing
# worker, the owner and every other worker one more pickle call per result. Not bytes: a
# packed value is bytes (unpack_memo and unpack_fields tell them apart by that).
_PLAIN = frozenset({int, float, str, bool, type(None)})


def pack_value(value: Any, *, by_reference: bool = False) -> bytes:
    """*value* as bytes, or TypeError naming it and saying what to do.

    *by_reference*: try the standard pickle first (several times faster on small values),
    which takes classes and functions by reference. Only for a value made in a process the
    database's owner started: whatever its main module defines at the top level, the owner's
    defines too (spawned children run it as ``__mp_main__``, which multiprocessing makes an
    alias of ``__main__`` in the owner). The owner's own values go by cloudpickle, which takes
    what its main module defines under the ``__main__`` guard by value.
    """
    if by_reference:
        try:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # a class or function made at run time, say: cloudpickle takes it by value
    try:
        return cast(bytes, cloudpickle.dumps(value))
    except Exception as exc:
        raise _cannot_travel(value, exc) from exc


def unpack_value(data: bytes) -> Any:
    return cloudpickle.loads(data)


def pack_memo(memo: Memo, keep_value: bool = True, *, by_reference: bool = False) -> Memo:
    """*memo* with its value as bytes (none, for a ``local=True`` value: *keep_value* False).
    Raises TypeError, saying what to do, if the value cannot travel. *by_reference*: see
    :func:`pack_value`."""
    if memo.state not in _WITH_VALUE:
        return memo
    return memo.replace(value=packed_value(memo, keep_value, by_reference=by_reference))


def packed_value(memo: Memo, keep_value: bool = True, *, by_reference: bool = False) -> Any:
    """*memo*'s value as it travels (see :func:`pack_memo`): bytes, or the value itself if it
    is a plain number, string, bool or None (see ``_PLAIN``)."""
    if memo.state not in _WITH_VALUE:
        return memo.value
    if memo.state is OK:
        if not keep_value:
            return None
        if type(memo.value) in _PLAIN:
            return memo.value
    return pack_value(memo.value, by_reference=by_reference)


# A memo as a client publishes it: its fields, the value packed, the state by its name. A
# plain tuple of plain values costs less to pickle and load than a Memo (no constructor
# call) and than its state (a class: pickled alone, as each entry is, every load of it looks
# the class up by module and name, a few microseconds).
MemoFields = tuple[str, Any, Any, int, int, int]
_STATES = {state.value: state for state in MemoState}


def memo_fields(memo: Memo, value: Any) -> MemoFields:
    return memo.state.value, value, memo.deps, memo.verified_at, memo.changed_at, memo.durability


def pack_entry(name: str, key: tuple[Any, ...], fields: MemoFields) -> bytes:
    """A result as it travels from the client that published it through the owner to the
    other clients (the owner passes it on as news without packing it again)."""
    return pickle.dumps((name, key, fields), pickle.HIGHEST_PROTOCOL)


def unpack_entry(entry: bytes) -> tuple[str, tuple[Any, ...], MemoFields]:
    """What :func:`pack_entry` packed: the query's name, the key and the memo's fields
    (the value still packed)."""
    return cast(tuple[str, tuple[Any, ...], MemoFields], pickle.loads(entry))


def unpack_fields(fields: MemoFields) -> Memo:
    """The memo a client published (see :data:`MemoFields`), its value loaded."""
    state, value = _STATES[fields[0]], fields[1]
    if state in _WITH_VALUE and isinstance(value, bytes):
        value = unpack_value(value)
    _, _, deps, verified_at, changed_at, durability = fields
    return Memo(state, value, deps, _revision(verified_at), _revision(changed_at), durability)


# One int object per recent revision in this process, shared by the memos it unpacks: each
# unpickled int past 256 is an object of its own (32 bytes, two per memo), so memory crept up
# as a long-lived database's revisions passed 256 and its memos were replaced.
_REVISIONS: dict[int, int] = {}
_KEPT_REVISIONS = 64


def _revision(number: int) -> int:
    shared = _REVISIONS.setdefault(number, number)
    if len(_REVISIONS) > _KEPT_REVISIONS:
        _REVISIONS.clear()  # the old ones are no longer in new memos
    return shared


def pack_memo_or_error(memo: Memo, keep_value: bool = True) -> Memo:
    """:func:`pack_memo`, or, for a value that cannot travel, the packed memo of that error."""
    try:
        return pack_memo(memo, keep_value)
    except TypeError as exc:
        return pack_memo(cannot_travel(memo, exc))  # a TypeError packs


def unpack_memo(memo: Memo) -> Memo:
    """The memo *pack_memo* packed, with its value loaded."""
    verified_at, changed_at = _revision(memo.verified_at), _revision(memo.changed_at)
    if memo.state in _WITH_VALUE and isinstance(memo.value, bytes):
        return memo.replace(
            value=unpack_value(memo.value), verified_at=verified_at, changed_at=changed_at
        )
    memo.verified_at, memo.changed_at = verified_at, changed_at
    return memo


def check_travels(memo: Memo) -> Memo:
    """*memo* if its value can travel to other processes, else the memo of the TypeError.

    The process that creates a database publishes its memos to its own table without packing
    them; this is the check that keeps it answering as every other process would. The standard
    pickle is tried first (it is several times faster on small values), then cloudpickle,
    which also packs functions and classes made at run time.
    """
    if memo.state not in _WITH_VALUE:
        return memo
    try:
        pickle.dumps(memo.value, pickle.HIGHEST_PROTOCOL)
    except Exception:
        try:
            cloudpickle.dumps(memo.value)
        except Exception as exc:
            return cannot_travel(memo, _cannot_travel(memo.value, exc))
    return memo


def cannot_travel(memo: Memo, error: TypeError) -> Memo:
    """The memo of *error*, which says why *memo*'s value cannot travel."""
    state = ERROR if memo.state is OK else memo.state
    return memo.replace(state=state, value=error)


def _cannot_travel(value: Any, exc: Exception) -> TypeError:
    return TypeError(
        f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled to the other "
        f"processes that share this database's query results ({type(exc).__name__}: {exc}); "
        "return picklable data, or mark the query local=True to keep its values in the "
        "process that computes them"
    )
