"""What a worker process adds to the fleet's Celery app when it starts.

Celery imports this module (with the task modules: :data:`fleet.constants.WORKER_MODULES`)
when a worker starts, before it builds its blueprints, and never in a client. Here:

- the kombu and Celery work-arounds (:mod:`workers.compat`), the heartbeat bootstep and the
  consumer that publishes task events in batches (:mod:`workers.consumer`),
  when a worker starts (``worker_init``) -- not on import: Flower imports this module too;
- each forked pool process's runtime (:mod:`workers.runtime`) and its preloaded models,
  made after the fork (``worker_process_init``: CUDA is not fork-safe) and before it takes
  a task. The main process makes its runtime when it first needs one (its steps on a
  thread or solo pool, the orphan check): a prefork master imports no op plug-in before
  it forks its children.
"""

from __future__ import annotations

import os
from typing import Any

from celery import current_app
from celery.signals import worker_init, worker_process_init
from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer as CeleryConsumer

from fleet.constants import LANE_ENV, WORKER_CLASS_ENV
from fleet.engine.dispatch import broker_is_store
from fleet.messaging.app import fleet_config
from fleet.messaging.transport import QoS
from fleet.sdk.registry import registry
from workers.celery_steps import guard_tasks
from workers.compat import patch_kombu_redis_restore, patch_thread_pool_flush
from workers.consumer import Consumer
from workers.heartbeat import Heartbeat
from workers.receipt import Receipt
from workers.runtime import runtime


@worker_init.connect
def _start_worker(sender: Any = None, **_: Any) -> None:
    """The starting worker (a ``WorkController``): the work-arounds in its process, and its
    heartbeat through its own app."""
    _batch_task_events(sender)
    patch_kombu_redis_restore()  # workers must survive a broker restart (see compat.py)
    patch_thread_pool_flush()  # ...and not run a step twice after one
    steps = sender.app.steps["consumer"]
    if Heartbeat not in steps:
        steps.add(Heartbeat)
    guard_tasks(sender.app)  # plain tasks run as `celery:` steps pass a step's checks
    _take_leases_on_receipt(sender)


def _take_leases_on_receipt(worker: Any) -> None:
    """Where the run store is the broker's Redis, the worker's main process takes each
    step's start lease in the round trip that records the message (workers.receipt)."""
    cfg = fleet_config(worker.app)
    if broker_is_store(worker.app, cfg):
        QoS.receipt = Receipt(worker.hostname, cfg.start_lease_s, cfg.run_ttl)


def _batch_task_events(worker: Any) -> None:
    """The worker's consumer publishes its task events in batches (workers.consumer) --
    unless the app was given a consumer class of its own."""
    if symbol_by_name(worker.consumer_cls) is CeleryConsumer:
        worker.consumer_cls = Consumer


@worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    """Each forked pool process gets its runtime, and loads the class's preset models before
    it takes a task; worker_proc_alive_timeout allows for this."""
    app = current_app._get_current_object()
    runtime(app)
    cls = os.environ.get(WORKER_CLASS_ENV)
    cfg = fleet_config(app)
    spec = cfg.classes.get(cls) if cls else None
    if spec is not None and spec.preload:
        registry.load(cfg.op_modules, cfg.op_plugins)  # op modules register the preloaders
        registry.preload(spec.preload, os.environ.get(LANE_ENV) or None)
