"""Choosing the backend: explicit > ``use`` > ``configure`` > environment > ``"serial"``.

Backends are found by name through the entry-point group ``dualmode.backends``, built-ins too,
so a third-party backend is selected exactly like ``"threads"``. Instances made from a name are
shared per ``(name, workers, watchdog)`` and closed at interpreter exit; pass a
:class:`Backend` instance to own its lifetime yourself.
"""

from __future__ import annotations

import atexit
import contextvars
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .backend import Backend, check_watchdog, check_workers
from .errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_backends",
    "configure",
    "current",
    "load_backend",
    "resolve_backend",
    "use",
]

ENTRY_POINT_GROUP = "dualmode.backends"
BACKEND_ENV = "DUALMODE_BACKEND"
WORKERS_ENV = "DUALMODE_WORKERS"
WATCHDOG_ENV = "DUALMODE_WATCHDOG"

BackendSpec = str | Backend

_scoped: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "dualmode_backend", default=None
)
# The process-wide choice of configure(): (name or instance, workers, watchdog), or None.
_configured: tuple[BackendSpec, int | None, float | None] | None = None
# Instances built from a name, shared per (name, workers, watchdog limit or None); guarded by
# _instances_lock on creation.
_instances: dict[tuple[str, int | None, float | None], Backend] = {}
_instances_lock = threading.Lock()


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def _free_threaded() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _auto_name() -> str:
    """threads on a free-threaded build, processes on a GIL build with >1 CPU, else serial."""
    if _free_threaded():
        return "threads"
    if Backend.default_workers() > 1:
        return "processes"
    return "serial"


def _shadowed_by_checkout() -> str | None:
    """Why the built-in backends cannot be imported, if dualmode comes from a source checkout.

    In the repository, ``backends/`` sits next to ``dualmode/`` and only an install maps it to
    ``dualmode.backends``. Run from the repository root (``python -m``, ``python -c``, a
    script there), Python imports the checkout's ``dualmode/`` in front of any installed
    (non-editable) copy, without that mapping. Shared by :func:`load_backend` and the
    ``dualmode`` command, so both say the same.
    """
    package_dir = Path(__file__).resolve().parent
    if importlib.util.find_spec("dualmode.backends") is not None:
        return None
    if not (package_dir.parent / "backends" / "__init__.py").exists():
        return None
    return (
        f"dualmode was imported from the source checkout {package_dir}, which shadows any "
        "installed copy: there backends/ is not mapped to dualmode.backends (a script's "
        "directory, and the current one under `python -m` or `-c`, comes first on sys.path). "
        f"Run from another directory, or install the checkout in editable mode: "
        f"python3 -m pip install -e {package_dir.parent}"
    )


def load_backend(name: str) -> type[Backend]:
    """The Backend class registered as *name* ("auto" resolved); ConfigError saying why if
    it is unknown or cannot run here (a missing dependency names the package)."""
    entry_points = _entry_points()
    if name == "auto":
        name = _auto_name()
    ep = entry_points.get(name)
    if ep is None:
        choices = ", ".join(sorted([*entry_points, "auto"]))
        # No backend registered at all, not even the built-ins: dualmode is not installed.
        shadowed = None if entry_points else _shadowed_by_checkout()
        raise ConfigError(
            f"unknown dualmode backend {name!r}; choose one of: {choices} (backends are "
            f"registered under the entry-point group {ENTRY_POINT_GROUP!r})"
            + ("" if shadowed is None else f". No backend is registered: {shadowed}")
        )
    try:
        cls = ep.load()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        shadowed = _shadowed_by_checkout() if missing.startswith("dualmode.") else None
        if shadowed is not None:
            raise ConfigError(f"backend {name!r} is unavailable: {shadowed}") from exc
        if missing == ep.module or ep.module.startswith(f"{missing}."):
            raise ConfigError(
                f"backend {name!r} is unavailable: its module {ep.module!r} cannot be imported "
                f"({exc}); reinstall the package that registers it"
            ) from exc
        raise ConfigError(
            f"backend {name!r} is unavailable: it needs the package {missing!r}, which is not "
            f"installed; install it (pip install {missing}) or choose another backend"
        ) from exc
    except Exception as exc:  # a broken third-party module must not break selection
        raise ConfigError(
            f"backend {name!r} is unavailable: importing {ep.value!r} failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(
            f"entry point {name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} is not a "
            "dualmode.Backend subclass; fix or uninstall the package that registers it"
        )
    reason = cls.unavailable_reason()
    if reason is not None:
        raise ConfigError(f"backend {name!r} is unavailable: {reason}")
    return cls


def available_backends() -> dict[str, str | None]:
    """Every registered backend: ``{name: None}`` if usable here, else ``{name: reason}``."""
    result: dict[str, str | None] = {}
    for name in sorted(_entry_points()):
        try:
            load_backend(name)
        except ConfigError as exc:
            result[name] = str(exc)
        else:
            result[name] = None
    return result


def _check_takes_watchdog(cls: type[Backend], watchdog: float | None) -> None:
    """ConfigError for a watchdog limit given to a (third-party) backend that takes none."""
    if watchdog and "watchdog" not in inspect.signature(cls).parameters:
        raise ConfigError(
            f"backend {cls.name!r} ({cls.__module__}.{cls.__qualname__}) takes no watchdog "
            f"option; leave watchdog and {WATCHDOG_ENV} unset with it, or ask its authors to "
            "accept watchdog= (docs/backends.md)"
        )


def _build(cls: type[Backend], workers: int | None, watchdog: float | None) -> Backend:
    if watchdog is None:
        return cls(workers)
    _check_takes_watchdog(cls, watchdog)
    return cls(workers, watchdog=watchdog)


def _shared_instance(name: str, workers: int | None, watchdog: float | None) -> Backend:
    if name == "auto":
        name = _auto_name()
    limit = _watchdog_from_environment() if watchdog is None else watchdog or None
    key = (name, workers, limit)
    backend = _instances.get(key)
    if backend is not None and not backend.closed:
        return backend
    cls = load_backend(name)
    with _instances_lock:
        backend = _instances.get(key)
        if backend is None or backend.closed:
            backend = _build(cls, workers, limit)
            _instances[key] = backend
    return backend


def _resolve_spec(spec: BackendSpec, workers: int | None, watchdog: float | None = None) -> Backend:
    if isinstance(spec, Backend):
        if workers is not None and workers != spec.workers:
            raise ConfigError(
                f"workers={workers} conflicts with the backend instance {spec!r}; "
                "pass only the instance, or a backend name with workers"
            )
        if watchdog is not None and (watchdog or None) != spec.watchdog:
            raise ConfigError(
                f"watchdog={watchdog} conflicts with the backend instance {spec!r}; "
                "pass only the instance, or a backend name with watchdog"
            )
        if spec.closed:
            raise ConfigError(f"{spec!r} is closed; create a new backend instance")
        return spec
    if not isinstance(spec, str):
        raise ConfigError(
            f"backend must be a backend name (str) or a dualmode.Backend instance, "
            f"got {type(spec).__name__}: {spec!r}"
        )
    return _shared_instance(spec, workers, watchdog)


def _workers_from_environment() -> int | None:
    text = os.environ.get(WORKERS_ENV, "").strip()
    if not text:
        return None
    try:
        return check_workers(int(text))
    except ValueError:  # from int("x"), or check_workers's ConfigError (a ValueError)
        raise ConfigError(
            f"{WORKERS_ENV}={text!r} is not a worker count: give a positive integer such as 2, "
            "or leave it unset for the backend's default"
        ) from None


def _watchdog_from_environment() -> float | None:
    """The watchdog's limit that ``DUALMODE_WATCHDOG`` sets: None when unset, empty or 0."""
    text = os.environ.get(WATCHDOG_ENV, "").strip()
    if not text:
        return None
    try:
        return check_watchdog(float(text)) or None
    except ValueError:  # from float("x"), or check_watchdog's ConfigError (a ValueError)
        raise ConfigError(
            f"{WATCHDOG_ENV}={text!r} is not a time limit: give the seconds a blocked wait may "
            "last before the watchdog reports it, such as 2.0, or 0 (or nothing) for no "
            "watchdog"
        ) from None


def _from_environment() -> Backend:
    name = os.environ.get(BACKEND_ENV, "").strip() or "serial"
    workers = _workers_from_environment()
    try:
        return _resolve_spec(name, workers)
    except ConfigError as exc:
        raise ConfigError(f"{BACKEND_ENV}={name!r}: {exc}") from None


def configure(
    backend: BackendSpec | None = None,
    workers: int | None = None,
    watchdog: float | None = None,
) -> None:
    """Set the process-wide default backend (below ``use`` and explicit ``backend=``).

    ``configure()`` with no arguments forgets the default, so the environment rules again.
    The choice is checked now: an unknown name, a bad worker count or a backend whose
    dependency is missing raises :class:`ConfigError` here, not at first use.

    *workers* is an int (``"2"`` is refused: only ``DUALMODE_WORKERS`` is read from text) or
    None for the backend's default, the CPUs this process may use. Any positive count is
    accepted with any backend, so that one program runs unchanged on each; a backend that is
    not parallel (``serial``) runs everything on the calling thread and reports
    ``workers == 1``.

    *watchdog* turns on the deadlock watchdog (docs/guarantees.md#the-deadlock-watchdog):
    callers blocked, with no timeout, in a wait-for cycle for longer than that many seconds
    raise :class:`~dualmode.DeadlockError`. None leaves it to ``DUALMODE_WATCHDOG`` (unset:
    off); 0 turns it off.
    """
    global _configured
    if backend is None:
        if workers is not None or watchdog is not None:
            raise ConfigError("configure(workers=..., watchdog=...) needs a backend name too")
        _configured = None
        return
    checked = check_workers(workers)
    limit = check_watchdog(watchdog)
    if isinstance(backend, str):
        _check_takes_watchdog(load_backend(backend), limit)
    else:
        _resolve_spec(backend, checked, limit)
    _configured = (backend, checked, limit)


@contextmanager
def use(
    backend: BackendSpec, workers: int | None = None, watchdog: float | None = None
) -> Iterator[Backend]:
    """Make *backend* current in this context (thread or task) until the block exits.

    Nests and restores the previous choice on exit, also on error. Uses contextvars, so each
    thread and each asyncio/trio task sees its own choice. Yields the Backend in force.
    *workers* is checked as by :func:`configure`: an int or None, and ``serial`` keeps one
    worker whatever the count (``dm.use("serial", workers=4)`` yields a backend with
    ``workers == 1``). Raises :class:`ConfigError` for an unknown or unusable backend or a bad
    worker count. *watchdog* is as for :func:`configure`: seconds, 0 (off) or None (the
    environment decides); backends made from a name are shared per (name, workers, watchdog).
    """
    resolved = _resolve_spec(backend, check_workers(workers), check_watchdog(watchdog))
    token = _scoped.set(resolved)
    try:
        yield resolved
    finally:
        _scoped.reset(token)


def current() -> Backend:
    """The backend in force here: ``use`` > ``configure`` > ``DUALMODE_BACKEND`` > serial."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    configured = _configured
    if configured is not None:
        return _resolve_spec(*configured)
    return _from_environment()


def resolve_backend(backend: BackendSpec | None) -> Backend:
    """An explicit ``backend=`` argument if given, else :func:`current`."""
    if backend is None:
        return current()
    return _resolve_spec(backend, None)


@atexit.register
def _close_shared_instances() -> None:
    for backend in list(_instances.values()):
        try:
            backend.close()
        except Exception as exc:  # at exit, report and go on closing the others
            print(f"dualmode: closing {backend!r} failed: {exc!r}", file=sys.stderr)
