"""``dm.Database`` and the ``@dm.query`` declarations of its methods.

::

    class Analyzer(dm.Database):
        source = dm.input()

        @dm.query
        def parse(self, path):
            return ast.parse(self.source[path])

    db = Analyzer()
    db.source["a.py"] = "x = 1"
    db.parse("a.py")            # computed once, memoized per (query, key)

A database class's queries and inputs are read from its class (and its bases) when its first
database is made (see :func:`_schema`): a class rebuilt by value in another process (see
``dualmode.query.shipping``) gets them the same way. The protocol behind the queries is in
``docs/architecture.md#the-query-protocol``; the user's guide is ``docs/queries.md``.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from ..config import BackendSpec, _resolve_spec, current, resolve_backend
from . import shipping
from .hits import THREAD_QUERIES, BoundQuery, _ThreadQueries, thread_queries_class
from .hits import thread_query_getter as _getter
from .inputs import _InputMap, input
from .lru import check_lru
from .runtime import Runtime
from .stats import DatabaseStats

__all__ = ["Database", "query"]

T = TypeVar("T")


class _QueryDescriptor(property, Generic[T]):
    """``@dm.query`` on a Database method: the method, its options, and access as BoundQuery.

    A property whose getter is C code (``operator.attrgetter``): ``db.parse`` reads this
    thread's bound query from the database's ``_ThreadQueries`` without running Python (see
    ``dualmode.query.hits``).
    """

    def __init__(
        self,
        fn: Callable[..., T],
        *,
        cycle: Callable[..., T] | None = None,
        cache_errors: bool = True,
        local: bool = False,
        volatile: bool = False,
        lru: int | None = None,
    ) -> None:
        self.fn = fn
        # An async body runs on an event loop (dualmode.query.awaiting; tasks.run_body).
        self.is_async = inspect.iscoroutinefunction(fn)
        self.cycle = cycle
        self.cache_errors = cache_errors
        self.local = local
        self.volatile = volatile
        self.lru = check_lru(fn.__name__, lru, local)
        self._named(fn.__name__)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _named(self, name: str) -> None:
        self.name = name
        super().__init__(_getter(name), doc=self.fn.__doc__)

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.name:
            self._named(name)
        if not issubclass(owner, Database) and THREAD_QUERIES not in vars(owner):
            # A mixin's queries work in a Database subclass (its instances have their own
            # attribute); on an instance of the mixin itself, this says what is wrong.
            setattr(owner, THREAD_QUERIES, _not_a_database(owner))

    def __reduce__(self) -> tuple[Any, ...]:
        # A class shipped by value carries its queries (a property does not pickle).
        options = (self.cycle, self.cache_errors, self.local, self.volatile, self.lru)
        return _rebuild_query, (self.fn, self.name, *options)

    if TYPE_CHECKING:

        @overload
        def __get__(self, db: None, owner: type | None = None, /) -> _QueryDescriptor[T]: ...

        @overload
        def __get__(self, db: Database, owner: type | None = None, /) -> BoundQuery[T]: ...

        def __get__(self, db: Database | None, owner: type | None = None, /) -> Any: ...


def _rebuild_query(
    fn: Callable[..., Any],
    name: str,
    cycle: Callable[..., Any] | None,
    cache_errors: bool,
    local: bool,
    volatile: bool,
    lru: int | None,
) -> _QueryDescriptor[Any]:
    descriptor: _QueryDescriptor[Any] = _QueryDescriptor(
        fn, cycle=cycle, cache_errors=cache_errors, local=local, volatile=volatile, lru=lru
    )
    descriptor._named(name)
    return descriptor


class _Misplaced(type):
    """The metaclass of the stand-ins found where a database's bound queries should be: a
    class (immortal on free-threaded builds, so reading it writes no shared count) whose every
    attribute read raises the TypeError that says what to do."""

    message: str

    def __getattr__(cls, name: str) -> NoReturn:
        if name.startswith("__"):  # tools that probe for special names get a plain "no"
            raise AttributeError(name)
        raise TypeError(cls.message.format(query=name))


def _not_a_database(owner: type) -> type:
    return _Misplaced(
        f"{owner.__name__}IsNotADatabase",
        (),
        {
            "message": f"query {{query!r}} is a @dm.query method of {owner.__qualname__}, "
            "which is not a dm.Database: queries run only on databases. Declare the class as "
            f"a subclass of dm.Database (class {owner.__name__}(dm.Database): ...)",
        },
    )


class _Uninitialized(metaclass=_Misplaced):
    """Found on a Database whose ``__init__`` did not run."""

    message = (
        "query {query!r} asked of a dm.Database that was not initialized: dm.Database.__init__ "
        "did not run. A subclass that defines __init__ must call super().__init__(...) in it"
    )


@overload
def query(fn: Callable[..., Coroutine[Any, Any, T]], /) -> _QueryDescriptor[T]: ...


@overload
def query(fn: Callable[..., T], /) -> _QueryDescriptor[T]: ...


@overload
def query(
    *,
    cycle: Callable[..., Any] | None = None,
    cache_errors: bool = True,
    local: bool = False,
    volatile: bool = False,
    lru: int | None = None,
) -> Callable[[Callable[..., T]], _QueryDescriptor[T]]: ...


def query(
    fn: Callable[..., T] | None = None,
    /,
    *,
    cycle: Callable[..., Any] | None = None,
    cache_errors: bool = True,
    local: bool = False,
    volatile: bool = False,
    lru: int | None = None,
) -> Any:
    """Make a Database method a memoized, single-flight, cycle-checked query.

    ``@dm.query`` or
    ``@dm.query(cycle=fn, cache_errors=True, local=False, volatile=False, lru=None)``,
    on a method of a :class:`Database` subclass (elsewhere, calling it raises TypeError).
    *cycle* is called as ``fn(db, *key)`` for the value this query takes when it lies on a
    dependency cycle (without it, the cycle raises CycleError). With ``cache_errors=False`` an
    exception is delivered to the caller and every waiter but not memoized: the next call
    executes the body again. With ``local=True`` (for values that are expensive to pickle,
    such as an AST) the processes backend keeps each value in the process that computed it:
    another worker process that needs it executes the body again there, at most once per
    process. On serial and threads it changes nothing. A ``volatile=True`` query (rustc's
    ``eval_always``, for bodies that read something outside the database) executes again in
    every new revision in which it is asked for; if its value is unchanged, what depends on
    it stays green. With ``lru=N`` (salsa's LRU) at most N values of the query are kept from
    one revision to the next (on processes: in the database's table, and in each worker
    process's cache); when an input changes, those verified longest ago are dropped, and
    recomputed when asked for again (see ``docs/queries.md#bounded-memory-lru``). *lru*
    must be a positive int or None (TypeError, ValueError), and not with ``local=True``.

    An ``async def`` method is an async query: from async code ``await db.q.async_get(key)``
    runs its body on the running event loop (asyncio or trio); a sync call ``db.q(key)`` runs
    it on a private asyncio loop in the calling thread (and raises RuntimeError on a thread
    whose event loop is running). Memoization, single-flight, cycles, errors and
    re-validation are those of sync queries; see ``docs/queries.md#async-queries``.
    """

    def decorate(f: Callable[..., T]) -> _QueryDescriptor[T]:
        if not callable(f):
            raise TypeError(f"@dm.query decorates a method, got {f!r}")
        return _QueryDescriptor(
            f, cycle=cycle, cache_errors=cache_errors, local=local, volatile=volatile, lru=lru
        )

    return decorate if fn is None else decorate(fn)


@dataclass(frozen=True)
class _Schema:
    """What a Database class declares: its queries, its inputs, and the _ThreadQueries class
    of its databases."""

    queries: list[_QueryDescriptor[Any]]
    inputs: frozenset[str]
    thread_queries: type[_ThreadQueries]


_schemas: weakref.WeakKeyDictionary[type, _Schema] = weakref.WeakKeyDictionary()
_schemas_lock = threading.Lock()


def _schema(cls: type[Database]) -> _Schema:
    """*cls*'s schema, read from its attributes (and its bases') on first use. Kept off the
    class, so that a class shipped by value carries only what its author wrote."""
    schema = _schemas.get(cls)
    if schema is None:
        attributes = {k: v for klass in reversed(cls.__mro__) for k, v in vars(klass).items()}
        queries = [v for v in attributes.values() if isinstance(v, _QueryDescriptor)]
        inputs = frozenset(k for k, v in attributes.items() if isinstance(v, input))
        with _schemas_lock:
            schema = _schemas.setdefault(
                cls, _Schema(queries, inputs, thread_queries_class(cls, queries))
            )
    return schema


class Database:
    """Base class of query databases: declare ``@dm.query`` methods and ``dm.input()``s.

    ``Analyzer(backend="threads", workers=2)`` fixes the backend that the memos live on and
    that ``prefetch`` runs on (default: the one in force when the database is created);
    *workers* is checked as by :func:`dm.configure <dualmode.configure>` (an int: ``"2"``
    raises ConfigError), and a serial database keeps one worker whatever the count. Every
    query is memoized per key and executes at most once per revision, however many threads or
    processes ask. Setting an input starts a new revision: what depends on it is re-validated
    when next asked for, and only the queries whose dependencies changed execute again.

    A database on the serial backend belongs to the thread that created it, as serial
    primitives do: its queries and inputs used from another thread raise WrongThreadError.

    On the processes backend the job table, memos and inputs live in the backend's coordinator
    and the database is shipped to workers: its class by reference where they can import it
    (a module, or the main script, which spawned workers import too), else by value with
    cloudpickle (a class made in a function, or in the main script under its
    ``if __name__ == "__main__":`` guard), and its own attributes by pickle. A class that
    cannot be shipped raises TypeError here, when the database is created. Its inputs are set
    in the creating process.
    """

    _runtime: Runtime
    _token: str
    _home: int
    _dualmode_thread_queries: Any = _Uninitialized

    def __init__(self, *, backend: BackendSpec | None = None, workers: int | None = None) -> None:
        if workers is None:
            self.backend = resolve_backend(backend)
        else:  # a backend by name with this many workers (the current one's name by default)
            self.backend = _resolve_spec(
                backend if backend is not None else current().name, workers
            )
        cls = type(self)
        schema = _schema(cls)
        table = self.backend.create_job_table(
            {q.name: q.cycle is not None for q in schema.queries},
            frozenset(q.name for q in schema.queries if q.volatile),
        )
        if table.shared:
            shipping.check_shippable(cls, self.backend.name)
        home = None if self.backend.parallel else get_ident()
        self._runtime = Runtime(self, schema.queries, schema.inputs, table, home=home)
        setattr(self, THREAD_QUERIES, schema.thread_queries(self._runtime))
        self._token = uuid.uuid4().hex
        self._home = os.getpid()
        shipping.register(self)

    @property
    def revision(self) -> int:
        """The current revision: 1, plus one per input set so far (as this process knows)."""
        return self._runtime.revision

    def stats(self) -> DatabaseStats:
        """Per query, a :class:`QueryStats` (hits, misses, executions, total and self time,
        time spent waiting); ``.revisions``: per revision, a :class:`RevisionStats` (how many
        were re-validated green, re-executed, backdated)."""
        return self._runtime.stats()

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._runtime.table.shared:
            raise TypeError(
                f"{self!r} cannot be pickled: on the {self.backend.name} backend its memos live "
                "in this process. Create it with backend='processes' to use it in other processes."
            )
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k not in _INTERNAL and not isinstance(v, (BoundQuery, _InputMap))
        }
        rt = self._runtime
        return _attach, (
            shipping.ShippedClass(type(self)),
            self._token,
            self.backend,
            rt.table,
            rt.revision,
            state,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self.backend.name}>"


_INTERNAL = frozenset({"backend", "_runtime", "_token", THREAD_QUERIES})


def _attach(
    cls: type[Database],
    token: str,
    backend: Any,
    table: Any,
    revision: int,
    state: dict[str, Any],
) -> Database:
    """Unpickle a Database: this process's copy of it, sharing the coordinator's job table,
    in the revision the sender was in (or a newer one it already knows)."""

    def rebuild() -> Database:
        db = cls.__new__(cls)
        db.__dict__.update(state)
        db.backend = backend
        db._token = token
        schema = _schema(cls)
        db._runtime = Runtime(db, schema.queries, schema.inputs, table, revision)
        setattr(db, THREAD_QUERIES, schema.thread_queries(db._runtime))
        return db

    db = shipping.attached(token, rebuild)
    db._runtime.learn_revision(revision)
    return db
