"""A worker process's state, in one place: :class:`WorkerRuntime`, reached with ``runtime(app)``.

A worker process holds a dispatcher (run store and compiled-workflow cache), the start leases
and the thread that renews them, a count of the steps it runs now, the model ops it has run,
and a cache of the tasks live workers have registered. All of it lives on one object, made
once per process and app -- the first step, heartbeat or orphan check to ask makes it, under
a lock, so the threads of a thread pool that all take their first step at once share one --
and made anew in each forked pool child (a child inherits no lease, no renewing thread, no
Redis connection of its parent's).
"""

from __future__ import annotations

import os
import threading

from celery import Celery

from fleet.client.registered import RegisteredTasks
from fleet.config import FleetConfig
from fleet.engine.dispatch import Dispatcher
from fleet.messaging.app import fleet_config
from fleet.messaging.replies import replier
from fleet.sdk.registry import registry
from fleet.store.leases import Leases
from fleet.store.runs import RunStore
from workers.holders import Holders
from workers.lease_keeper import Keeper


class Running:
    """Steps this worker process runs right now (a thread pool runs several at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def enter(self) -> int:
        with self.lock:
            self.count += 1
            return self.count

    def leave(self) -> int:
        with self.lock:
            self.count -= 1
            return self.count + 1


class WorkerRuntime:
    """Everything one worker process keeps between steps, for one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.cfg: FleetConfig = fleet_config(app)
        registry.load(self.cfg.op_modules, self.cfg.op_plugins)
        store = RunStore(
            self.cfg.backend_url,
            self.cfg.run_ttl,
            on_end=replier(app),
            max_connections=self.cfg.redis_max_connections,
        )
        self.engine = Dispatcher(app, self.cfg, store, registry)
        judge = Holders(store.redis, self.cfg.worker_ttl)  # a lapsed lease's holder: dead?
        self.leases = Leases(store.redis, self.cfg.run_ttl, self.cfg.start_lease_s, judge)
        self.keeper = Keeper()  # the leases this process holds, renewed while their ops run
        self.running = Running()
        self.warm: set[str] = set()  # the model ops this process has run (announced once)
        self.registered = RegisteredTasks(store.redis, self.cfg.worker_ttl)

    @property
    def store(self) -> RunStore:
        return self.engine.store


_lock = threading.Lock()
_runtimes: dict[int, WorkerRuntime] = {}  # by id(app): a process has one app but in tests


def runtime(app: Celery) -> WorkerRuntime:
    """This process's runtime for ``app``, made on first use."""
    found = _runtimes.get(id(app))
    if found is not None:
        return found
    with _lock:
        if id(app) not in _runtimes:
            _runtimes[id(app)] = WorkerRuntime(app)
        return _runtimes[id(app)]


def _after_fork() -> None:
    """A forked pool child starts with nothing of its parent's (see the module's doc)."""
    global _lock
    _lock = threading.Lock()
    _runtimes.clear()


os.register_at_fork(after_in_child=_after_fork)
