"""``db.parse``: a query bound to its database, and why it is a plain function.

Free-threaded CPython 3.13 writes the reference count of every object a call touches, and two
threads writing one object's count take turns on its cache line: two threads hitting the cached
keys of one shared callable object run no faster than one (benchmarks/bench_query.py measures
it). CPython exempts a few kinds of objects from those writes (deferred reference counting):
functions made from module-level code, modules, their ``__dict__``, and classes. So a bound
query is a function made from :func:`_call_query`'s code with globals of its own, a module
``__dict__``. A hit touches only those, the calling thread's own objects, and immortal ones:

1. ``_by_thread[get_ident()]``: this thread's list of per-query calls (a ``functools.lru_cache``
   of its own per query, or while a body runs a wrapper that records the dependency first);
2. that cache, called with the argument.

Everything else (misses, other argument counts, ``peek``, ``prefetch``, ``async_get``) goes to
the query's handle, an ordinary object that implements :class:`QueryHandle`. On builds with a
GIL the same function is simply a cheap call.

A function does not pickle by reference, so backends that ship callables to other processes
pickle with :func:`reduce` as a ``reducer_override``: a bound query travels as its database and
name.
"""

# ruff: noqa: F821
from __future__ import annotations

import builtins
import types
from collections.abc import Callable, Iterable
from threading import get_ident
from typing import Any, Protocol, TypeVar, runtime_checkable

T_co = TypeVar("T_co", covariant=True)

NO_ARG: Any = object()  # no argument given (None is a valid key)


class Miss(Exception):
    """Raised through a thread's cache when it does not hold the argument: the caller then
    runs the miss path outside the cache (lru_cache holds a lock while its function runs on
    free-threaded builds, and a query's miss path may re-enter the same cache)."""


@runtime_checkable
class BoundQuery(Protocol[T_co]):
    """``db.q``: call it with a key (``db.parse("a.py")``) for the memoized value."""

    def __call__(self, *key: Any) -> T_co: ...

    def peek(self, *key: Any, default: Any = None) -> Any:
        """The memoized value without computing anything (see ``QueryHandle.peek``)."""
        ...

    def prefetch(self, keys: Iterable[Any]) -> None:
        """Compute the missing keys in parallel on the database's backend."""
        ...

    async def async_get(self, *key: Any) -> T_co:
        """``self(*key)`` from asyncio or trio code."""
        ...


class QueryHandle(Protocol):
    """What a bound query's function asks of the engine off its hit path."""

    def thread_calls(self) -> list[Callable[[Any], Any]]:
        """Register this thread in ``_by_thread`` (current revision) and return its calls."""
        ...

    def miss(self, arg: Any) -> Any:
        """The value for a one-argument call this thread's cache lacks."""
        ...

    def call_with_key(self, key: tuple[Any, ...]) -> Any:
        """A call with no argument or several."""
        ...

    def check_hashable(self, arg: Any) -> None:
        """Raise the clear TypeError if *arg* is unhashable; return otherwise."""
        ...

    def peek(self, *key: Any, default: Any = None) -> Any: ...

    def prefetch(self, keys: Iterable[Any]) -> None: ...

    async def async_get(self, *key: Any) -> Any: ...

    def __reduce__(self) -> tuple[Any, ...]: ...


# Each bound query's own globals hold these three (see bind); these module-level annotations
# only name them for readers and type checkers (hence ruff's F821 is off for this file).
_handle: QueryHandle
_by_thread: dict[int, list[Callable[[Any], Any]]]
_index: int


def _call_query(arg: Any = NO_ARG, /, *more: Any) -> Any:
    if more or arg is NO_ARG:
        return _handle.call_with_key(() if arg is NO_ARG else (arg, *more))
    try:
        calls = _by_thread[get_ident()]
    except KeyError:  # this thread's first call in this revision
        calls = _handle.thread_calls()
    try:
        return calls[_index](arg)
    except Miss:
        return _handle.miss(arg)
    except TypeError:
        _handle.check_hashable(arg)
        raise


def new_thread_map() -> dict[int, list[Callable[[Any], Any]]]:
    """The ``_by_thread`` map of one database: a module's ``__dict__``, because those are
    exempt from reference-count writes (a plain dict would be a shared object on every hit)."""
    return types.ModuleType("dualmode.bound_query.threads").__dict__  # type: ignore[return-value]


def bind(
    handle: QueryHandle,
    index: int,
    by_thread: dict[int, list[Callable[[Any], Any]]],
    fn: Callable[..., Any],
    qualname: str,
) -> BoundQuery[Any]:
    """The function ``db.<query>``: calls go to ``by_thread[thread][index]``, the rest to
    *handle*. Named and documented after the query's body *fn*."""
    namespace = types.ModuleType(fn.__module__).__dict__
    namespace.update(
        __builtins__=builtins,
        _handle=handle,
        _by_thread=by_thread,
        _index=index,
        get_ident=get_ident,
        Miss=Miss,
        NO_ARG=NO_ARG,
    )
    bound: Any = types.FunctionType(
        _call_query.__code__, namespace, fn.__name__, _call_query.__defaults__
    )
    bound.__qualname__ = qualname
    bound.__doc__ = fn.__doc__
    bound.peek = handle.peek
    bound.prefetch = handle.prefetch
    bound.async_get = handle.async_get
    bound.__dualmode_query__ = handle
    return bound  # type: ignore[no-any-return]


def is_bound_query(obj: object) -> bool:
    return type(obj) is types.FunctionType and hasattr(obj, "__dualmode_query__")


def reduce(obj: object) -> tuple[Any, ...] | None:
    """For a pickler's ``reducer_override``: how a bound query pickles (its handle's
    ``__reduce__``: the database and the query's name), or None for anything else."""
    if is_bound_query(obj):
        handle: QueryHandle = obj.__dualmode_query__  # type: ignore[attr-defined]
        return handle.__reduce__()
    return None
