"""How a database travels to other processes (the processes backend's workers).

A pickled database is its class, its token, its backend and job table (handles to the same
coordinator), the revision the sender was in, and its own attributes. Each process rebuilds
it once per token (:func:`attached`), with its own memo cache.

The class travels as par_map's functions do: by reference where the receiver can import it
(a module's class; a class at the top level of the main script, which spawned workers import
as ``__mp_main__``), by value with cloudpickle otherwise (a class made in a function, or in the
script under its ``if __name__ == "__main__":`` guard). A main-script class carries its value
too, for a receiver whose copy of the script does not define it. See
``docs/architecture.md#the-query-protocol``.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle  # type: ignore[import-untyped]

from .. import by_value

if TYPE_CHECKING:
    from .database import Database

__all__ = ["ShippedClass", "attached", "check_shippable", "register"]

_MAIN_MODULES = ("__main__", "__mp_main__")  # a spawned worker runs the script as __mp_main__

# The databases this process has (made here, or received from another process), by token: a
# database shipped to a worker again and again is rebuilt there once, with one memo cache.
_attached: weakref.WeakValueDictionary[str, Database] = weakref.WeakValueDictionary()
_attached_lock = threading.Lock()

# Per class, its cloudpickle bytes (None: it cannot be pickled by value), made once.
_class_values: weakref.WeakKeyDictionary[type, bytes | None] = weakref.WeakKeyDictionary()
_class_values_lock = threading.Lock()


def register(db: Database) -> None:
    """Record a database made in this process, so that it is its own copy here."""
    with _attached_lock:
        _attached[db._token] = db


def attached(token: str, rebuild: Callable[[], Database]) -> Database:
    """This process's database of *token*, rebuilt (once) if it has none yet."""
    with _attached_lock:
        db = _attached.get(token)
        if db is None:
            db = _attached[token] = rebuild()
    return db


def _find(module: Any, qualname: str) -> Any:
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _importable(cls: type) -> bool:
    """Whether *cls* is found by its module and qualified name (so pickles by reference)."""
    module = sys.modules.get(cls.__module__)
    return (
        module is not None
        and "<locals>" not in cls.__qualname__
        and (_find(module, cls.__qualname__) is cls)
    )


def _main_reimported() -> bool:
    """Whether spawned workers import this process's main module (multiprocessing.spawn's
    rule: a script or a ``-m`` module, not ``-c`` code, a REPL or a package's __main__)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return not (name == "__main__" or name.endswith(".__main__"))
    return getattr(main, "__file__", None) is not None


def _value_of(cls: type) -> bytes | None:
    with _class_values_lock:
        if cls in _class_values:
            return _class_values[cls]
    try:
        value: bytes | None = cloudpickle.dumps(cls)
    except Exception:
        value = None
    with _class_values_lock:
        _class_values[cls] = value
    return value


def check_shippable(cls: type, backend: str) -> None:
    """Raise TypeError now if *cls* cannot reach worker processes, saying what to do."""
    if cls.__module__ in _MAIN_MODULES:
        if _value_of(cls) is not None or (_importable(cls) and _main_reimported()):
            return
    elif _importable(cls):
        return
    try:
        cloudpickle.dumps(cls)
    except Exception as exc:
        raise TypeError(
            f"{cls.__qualname__} cannot be used on the {backend} backend: its queries run in "
            f"worker processes, and the class reaches them neither by reference (they cannot "
            f"import it) nor by value with cloudpickle ({type(exc).__name__}: {exc}). Define "
            "it at the top level of a module or of the script, without unpicklable class "
            "attributes."
        ) from exc


class ShippedClass:
    """A Database class inside a pickle: loads as the class itself (see the module's text)."""

    __slots__ = ("cls",)

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __reduce__(self) -> tuple[Any, ...]:
        cls = self.cls
        if cls.__module__ in _MAIN_MODULES:
            value = _value_of(cls) if cls.__module__ == "__main__" else None
            return _main_class, (cls.__qualname__, value)
        if _importable(cls):
            return _as_is, (cls,)  # the pickler takes it by reference
        return by_value.load_once, (cloudpickle.dumps(cls),)


def _as_is(cls: type) -> type:
    return cls


def _main_class(qualname: str, value: bytes | None) -> type:
    """The main script's class *qualname* in this process: this process's own (the parent's
    script, or a worker's copy of it), else the class rebuilt from its pickled *value*."""
    found = _find(sys.modules.get("__main__"), qualname)
    if isinstance(found, type) and found.__qualname__ == qualname:
        return found
    if value is None:
        raise TypeError(
            f"the database class {qualname} of the main script is not defined in this "
            "process's copy of the script, and cannot be pickled by value: define it at the "
            'top level of the script, outside the `if __name__ == "__main__":` guard'
        )
    cls: type = by_value.load_once(value)
    return cls
