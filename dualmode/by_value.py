"""Code that travels by value, loaded once per process.

cloudpickle sends a function or class that the receiving process cannot import (a lambda, a
closure, a class made in a function, the main script's functions under ``spawn``) by value: its
code and what it closes over. Loading that value makes a new function each time, so a worker
process that runs a thousand tasks of one lambda would make a thousand functions. Here each
such function or class is pickled apart, and a process keeps what it loaded from the same bytes
(:func:`load_once`): one function per worker process, whatever the number of tasks.

Why (docs/architecture.md#code-that-travels-by-value):

- **memory**: free-threaded CPython 3.13 never frees a function, code object or class made
  after a second thread has started (it makes them immortal; 3.14 no longer does). A worker
  grew by about 1.4 kB per task of a lambda, without bound.
- **time**: building code objects is the costly part of loading a small task.

The price, the one dask pays for the same cache (``distributed``'s ``cache_loads``): a task
that changes its function's closure or by-value globals leaves the change for the next task of
the same function in that worker. Values over :data:`LARGEST_KEPT` bytes (a function that
closes over big data) load afresh each time.
"""

from __future__ import annotations

import functools
import io
import pickle
import types
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

__all__ = ["LARGEST_KEPT", "dumps", "load_once"]

LARGEST_KEPT = 100_000  # bytes: as dask; bigger values are mostly the data they close over
_KEPT = 256  # distinct functions and classes a process keeps (least recently used go)


def dumps(obj: object) -> bytes:
    """Pickle *obj* with cloudpickle, each function or class it sends by value apart, so
    that the receiver loads it with :func:`load_once`."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
        return file.getvalue()


def load_once(value: bytes) -> Any:
    """The function or class pickled by value as *value*: loaded once per process while it
    is among the last few hundred used (see the module's text for what that means)."""
    if len(value) > LARGEST_KEPT:
        return pickle.loads(value)
    return _load_kept(value)


@functools.lru_cache(maxsize=_KEPT)
def _load_kept(value: bytes) -> Any:
    return pickle.loads(value)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    def reducer_override(self, obj: Any) -> Any:
        # Called for nearly every object pickled: anything but a function or a class goes
        # straight to the dispatch table, where cloudpickle's own override sends it, without
        # a second Python call per object (which cost 12% on a chunk of 1,000 small objects).
        if not isinstance(obj, (types.FunctionType, type)):
            return NotImplemented
        if super().reducer_override(obj) is NotImplemented:  # by reference
            return NotImplemented
        return load_once, (cloudpickle.dumps(obj),)
