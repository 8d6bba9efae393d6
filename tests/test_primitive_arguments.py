"""Constructing primitives, on every backend: wrong arguments raise TypeError (or ValueError)
saying what was wrong and what to write instead, and what code written for ``threading``
relies on (weak references, ``Condition`` over a ``threading`` lock) holds or says why not."""

from __future__ import annotations

import gc
import inspect
import threading
import weakref
from typing import Any

import pytest

import dualmode as dm
from dualmode.backend import builds
from dualmode.backends.serial import SerialBackend

pytestmark = pytest.mark.timeout(60)

# Every public primitive class of dualmode.primitives (with a constructor, its __new__, kept as
# _create), and a first argument for those whose first parameter is required or takes any value.
PUBLIC = [
    cls
    for cls in vars(dm.primitives).values()
    if isinstance(cls, type) and issubclass(cls, dm.primitives.Primitive) and "_create" in vars(cls)
]
FIRST = {dm.Barrier: (2,), dm.WorkerLocal: (list,), dm.Mutex: (1,), dm.FreezeLock: (1,)}
PRIMITIVES = [(cls, FIRST.get(cls, ())) for cls in PUBLIC]
IDS = [cls.__name__ for cls, _ in PRIMITIVES]


def test_every_public_primitive_is_covered() -> None:
    assert len(PUBLIC) == 15


@pytest.mark.parametrize(("cls", "args"), PRIMITIVES, ids=IDS)
def test_backend_given_by_position_says_it_is_keyword_only(
    dualmode_backend: str, cls: type[Any], args: tuple[Any, ...]
) -> None:
    """``dm.Lock("threads")``, ``dm.Semaphore(2, "threads")``, ``dm.Condition("threads")``...:
    one TypeError naming the class and showing the keyword form, whether the name lands in a
    surplus position or in a parameter that wants a number, a lock or a callable."""
    name = cls.__name__
    with pytest.raises(TypeError, match=rf"dm\.{name}\(.*the backend is keyword-only") as raised:
        cls(*args, dualmode_backend)
    assert f"backend={dualmode_backend!r})" in str(raised.value)


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (dm.Lock, ("threads",)),
        (dm.Event, ("threads",)),
        (dm.OnceCell, ("serial",)),
        (dm.Semaphore, (2, "threads")),
        (dm.Mutex, (0, "threads")),
    ],
    ids=["Lock", "Event", "OnceCell", "Semaphore", "Mutex"],
)
def test_surplus_positional_backend_shows_the_call_to_write(
    dualmode_backend: str, cls: type[Any], args: tuple[Any, ...]
) -> None:
    kept = "".join(f"{arg!r}, " for arg in args[:-1])
    with pytest.raises(TypeError) as raised:
        cls(*args)
    message = str(raised.value)
    assert "too many positional arguments" in message
    assert f"dm.{cls.__name__}({kept}backend={args[-1]!r})" in message
    assert f"the signature is dm.{cls.__name__}(" in message and "*, backend=None)" in message


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: dm.Semaphore("2"), "value"),
        (lambda: dm.BoundedSemaphore(1.5), "value"),
        (lambda: dm.Barrier("3"), "parties"),
        (lambda: dm.AtomicInt("0"), "value"),
        (lambda: dm.Queue("10"), "maxsize"),
    ],
    ids=["Semaphore", "BoundedSemaphore", "Barrier", "AtomicInt", "Queue"],
)
def test_a_number_argument_must_be_an_int(dualmode_backend: str, call: Any, param: str) -> None:
    with pytest.raises(TypeError, match=rf"{param} must be an int, got"):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dm.WorkerLocal(3), r"dm\.WorkerLocal\(\): factory must be a callable, got 3"),
        (lambda: dm.Barrier(2, 3), r"action must be a callable or None, got 3"),
        (lambda: dm.Barrier(2, None, "1"), r"timeout must be a number of seconds or None"),
        (lambda: dm.Condition(3), r"lock must be a lock \(with acquire\(\) and release\(\)\)"),
        (lambda: dm.Lock(blocking=True), r"unexpected keyword argument 'blocking'"),
        (lambda: dm.Barrier(), r"missing a required argument: 'parties'"),
        (lambda: dm.WorkerLocal(), r"missing a required argument: 'factory'"),
    ],
    ids=["factory", "action", "timeout", "lock", "keyword", "parties", "no-factory"],
)
def test_wrong_arguments_say_what_was_expected(
    dualmode_backend: str, call: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dm.Semaphore(-1), r"dm\.Semaphore\(\): the initial value must be >= 0, got -1"),
        (lambda: dm.BoundedSemaphore(value=-1), r"initial value must be >= 0"),
        (lambda: dm.Barrier(0), r"dm\.Barrier\(\): parties must be >= 1, got 0"),
        (lambda: dm.Barrier(parties=-1), r"parties must be >= 1"),
    ],
    ids=["Semaphore", "BoundedSemaphore", "Barrier", "Barrier-keyword"],
)
def test_out_of_range_numbers_raise_value_error(
    dualmode_backend: str, call: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_arguments_by_keyword_work(dualmode_backend: str) -> None:
    assert dm.Semaphore(value=2).acquire(blocking=False)
    assert dm.Barrier(parties=1, action=None, timeout=1.0).parties == 1
    assert dm.AtomicInt(value=True).load() == 1  # an index, as operator.index takes it
    bounded = dm.Queue(maxsize=1)
    bounded.put(1)
    assert bounded.full()
    assert dm.WorkerLocal(factory=list).get() == []


class _FailingSerial(SerialBackend):
    """A backend whose factory itself raises TypeError: that error must reach the caller."""

    name = "failing-serial"

    def create_lock(self) -> Any:
        raise TypeError("raised inside the backend's factory")


def test_a_type_error_from_inside_the_factory_is_not_rewritten() -> None:
    with _FailingSerial() as backend, pytest.raises(TypeError, match="inside the backend's"):
        dm.Lock(backend=backend)


def test_a_backend_class_takes_no_backend_argument(dualmode_backend: str) -> None:
    concrete = type(dm.Lock())
    with pytest.raises(TypeError, match=r"takes no backend= argument.*dm\.Lock\(backend=\.\.\.\)"):
        concrete(backend=dualmode_backend)


class _ForgetfulLock(dm.Lock):
    """A backend author's Lock that forgot ``locked`` and ``release``."""

    def __init__(self, backend: SerialBackend, /) -> None:
        self._backend = backend

    @property
    def backend(self) -> SerialBackend:
        return self._backend

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True


class _ForgetfulSerial(SerialBackend):
    name = "forgetful-serial"
    create_lock = builds(_ForgetfulLock)


def test_a_backend_class_missing_a_method_is_refused_naming_each() -> None:
    """Type checkers see the public classes as concrete (users construct them), but a backend's
    class still cannot be built without every method its public class leaves to backends: the
    first ``dm.Lock()`` on that backend raises TypeError naming each missing one."""
    with _ForgetfulSerial() as backend:
        for build in (lambda: dm.Lock(backend=backend), lambda: _ForgetfulLock(backend)):
            with pytest.raises(TypeError, match=r"_ForgetfulLock.*\blocked\b.*\brelease\b"):
                build()


@pytest.mark.parametrize(("cls", "args"), PRIMITIVES, ids=IDS)
def test_the_constructor_signature_is_the_documented_one(
    cls: type[Any], args: tuple[Any, ...]
) -> None:
    """``help(dm.Semaphore)`` and ``inspect.signature`` show the arguments docs/primitives.md
    documents, ``backend=`` keyword-only last, not the dispatching metaclass's ``*args``."""
    *documented, backend = inspect.signature(cls).parameters.values()
    assert (backend.name, backend.kind, backend.default) == ("backend", backend.KEYWORD_ONLY, None)
    assert all(param.kind is param.POSITIONAL_OR_KEYWORD for param in documented)
    assert len(documented) >= len(args)


def test_help_shows_each_argument_and_its_type() -> None:
    assert str(inspect.signature(dm.Semaphore)) == (
        "(value: 'int' = 1, *, backend: 'BackendSpec | None' = None)"
    )


@pytest.mark.parametrize(("cls", "args"), PRIMITIVES, ids=IDS)
def test_every_primitive_can_be_weakly_referenced(
    dualmode_backend: str, cls: type[Any], args: tuple[Any, ...]
) -> None:
    """As threading's objects can (lock_tests' test_weakref_*); the reference dies with it."""
    obj = cls(*args)
    ref = weakref.ref(obj)
    assert ref() is obj
    del obj
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("kind", [threading.Lock, threading.RLock], ids=["Lock", "RLock"])
def test_condition_over_a_threading_lock(dualmode_backend: str, kind: Any) -> None:
    """threads waits on it as threading.Condition does; serial (whose waits read the lock's
    borrow flag) and processes (whose coordinator cannot reach it) refuse it, naming the fix."""
    lock = kind()
    if dualmode_backend == "threads":
        cond = dm.Condition(lock)
        with cond:
            assert lock.acquire(False) is (kind is threading.RLock)  # held, by this thread
            assert cond.wait(0.01) is False
            if kind is threading.RLock:
                lock.release()
        assert lock.acquire(False)
        lock.release()
        return
    fix = {
        "serial": r"on the serial backend.*omit lock= .*backend='threads'",
        "processes": r"on the processes backend.*cannot reach.*omit lock=",
    }[dualmode_backend]
    with pytest.raises(TypeError, match=fix):
        dm.Condition(lock)
