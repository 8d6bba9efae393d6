"""The processes backend: primitives hosted by one coordinator process, usable from any process.

Each :class:`ProcessesBackend` starts one *coordinator* (a :mod:`multiprocessing.managers`
server, started with ``spawn``) on its first primitive, and a pool of spawned *worker* processes
on its first parallel call. The coordinator holds the real objects, which are the
:mod:`threads backend <dualmode.backends.threads>`'s classes, so there is one implementation of
the synchronization logic; the client classes forward each method call to it, one round trip
each, from any process started from the creating one. Values travel by pickle, exceptions keep
their type, and a coordinator or worker that dies makes the calls that needed it raise
:class:`~dualmode.WorkerCrashed`.

A query database's job table is not hosted there: the process that creates the database keeps
it, so that process's threads claim and publish with no round trip, and serves it to the other
processes once the database is pickled for them.

One module per process role, as in :mod:`concurrent.futures`:

- :mod:`.backend`: :class:`ProcessesBackend`, in the process that created it;
- :mod:`.link`: a process's connections to the coordinator and its reference counts;
- :mod:`.primitives`: the primitives' client classes, usable in every process;
- :mod:`.table_server`: a database's job table in the process that created it, and its serving;
- :mod:`.job_table`: the client of that table, in every other process;
- :mod:`.packing`: how query values travel between processes;
- :mod:`.coordinator`: the coordinator process and the objects it hosts;
- :mod:`.workers`: the worker pool, and what runs in each worker;
- :mod:`.mp_internals`: the one module that touches multiprocessing's internals.

What travels between the processes, the guarantees and where each is kept, and the limits:
docs/architecture.md#the-processes-backend-one-module-per-process-role.
"""

from .backend import ProcessesBackend

__all__ = ["ProcessesBackend"]
