"""The Celery application clients and workers share: safe defaults, the fleet router, header
stamping.

Creating it patches nothing and imports nothing of the worker side: a client sends ``fleet.*``
tasks by name. What only a worker process needs -- the task modules, the heartbeat bootstep,
the kombu work-arounds, model preloading -- is in the ``workers`` package, which Celery
imports when a worker starts (``include``: :data:`fleet.constants.WORKER_MODULES`), so
``celery -A fleet worker -Q gpu`` works as with any Celery app and ``fleet worker gpu`` adds
the class preset (pool, concurrency, prefetch, time limits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import before_task_publish

from fleet.config import FleetConfig, load_config
from fleet.constants import (
    AMQP_SCHEMES,
    CELERY_STEP_HEADER,
    ROUTE_HEADER,
    SENT_AT_HEADER,
    STEP_TASK,
    TASK_PREFIX,
    WORKER_CLASS_ENV,
    WORKER_MODULES,
)
from fleet.messaging.backend import backend_setting
from fleet.messaging.replies import replier
from fleet.messaging.transport import Connection
from fleet.routing.router import FleetRouter, take_decision
from fleet.store.runs import RunStore


class FleetAMQP(AMQP):
    """Celery's message maker, with one change: a task sent under a ``shadow`` name (a step's
    ``workflow:node [op]``) says so in its ``task-sent`` event too. Celery puts the real task
    name there and the shadow in the worker's events, so a monitor that gets the sent event
    after the received one (Flower) showed the step as ``fleet.step``."""

    # kombu's connection, with the fleet's Redis transport for a redis:// broker: kombu's,
    # less a new Redis client per publish, with pools that wait (fleet.messaging.transport)
    Connection = BrokerConnection = Connection

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        # Celery passes shadow by position or by name: read it from the message it made
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message

    def _create_task_sender(self) -> Callable[..., Any]:
        send = super()._create_task_sender()

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            # Celery passes every send option on as a message property, ``argsrepr`` and
            # ``kwargsrepr`` too, which the message's headers carry already: sent once.
            options.pop("argsrepr", None)
            options.pop("kwargsrepr", None)
            return send(producer, name, message, **options)

        return send_task_message


def _run_failer(app: Celery, cfg: FleetConfig) -> Callable[[str, str | None, str], None]:
    """How the router fails a run (a policy found no class to run a step on)."""
    stores: list[RunStore] = []

    def fail(run_id: str, node: str | None, why: str) -> None:
        if not stores:
            max_conn = cfg.redis_max_connections
            stores.append(RunStore(cfg.backend_url, cfg.run_ttl, replier(app), max_conn))
        stores[0].fail(run_id, node, why)

    return fail


def configure(app: Celery, cfg: FleetConfig) -> None:
    """Apply ``cfg`` to ``app`` (broker, serializers, reliability, routing)."""
    app.conf.update(
        broker_url=cfg.broker_url,
        result_backend=backend_setting(cfg.backend_url),
        # JSON only: nothing that crosses the broker may execute code when read.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Long steps: acknowledge after the work, requeue if the process dies, one at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": cfg.visibility_timeout},
        result_expires=cfg.run_ttl,
        task_routes=(FleetRouter(cfg, on_fail=_run_failer(app, cfg)),),
        task_default_queue=cfg.classes[cfg.control_class].queue_name,
        task_track_started=True,
        # Each worker also consumes a queue of its own (<hostname>.dq2): prefix affinity
        # sends a run's next LLM round there (fleet.routing.affinity).
        worker_direct=True,
        # Task events, for Flower: one setting (task_events) for clients and workers alike.
        task_send_sent_event=cfg.task_events,
        worker_send_task_events=cfg.task_events,
        # Model loading in worker_process_init may take longer than the 4 s default.
        worker_proc_alive_timeout=120,
        broker_connection_retry_on_startup=True,
        # Sending a step through a broker restart: keep trying for about 15 s, not 0.6 s.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 12,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        imports=tuple(cfg.task_modules),  # the plain Celery tasks `celery:` steps call
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    if cfg.broker_url.startswith(AMQP_SCHEMES) and cfg.amqp_queues == "quorum":
        # Replicated queues, and a publish that returns only once the broker has the message:
        # nothing sent is lost in a broker restart. Quorum queues keep no priorities.
        app.conf.task_create_missing_queue_type = "quorum"
        app.conf.task_default_queue_type = "quorum"  # the control class's queue too
        app.conf.worker_detect_quorum_queues = True
        app.conf.broker_transport_options = {"confirm_publish": True}
    elif cfg.broker_url.startswith(AMQP_SCHEMES):
        # RabbitMQ honours message priorities only on queues declared with x-max-priority.
        app.conf.task_queue_max_priority = 9  # affinity.direct_queue declares the same
    preset = os.environ.get(WORKER_CLASS_ENV)
    if preset and preset in cfg.classes:
        app.conf.task_acks_late = cfg.classes[preset].acks_late
    app.fleet_config = cfg


def create_app(cfg: FleetConfig | None = None) -> Celery:
    """A fleet Celery app for ``cfg`` (the environment's configuration by default)."""
    cfg = cfg or load_config()
    # The worker side, imported by Celery only when a worker starts (never in a client).
    app = Celery("fleet", include=list(WORKER_MODULES), amqp=FleetAMQP)
    configure(app, cfg)
    return app


@before_task_publish.connect
def _stamp_headers(
    sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    """Stamp send time and the routing decision on every fleet message."""
    if headers is None:
        return
    celery_step = CELERY_STEP_HEADER in headers  # a `celery:` step, routed as fleet.step
    if not celery_step and not str(headers.get("task", "")).startswith(TASK_PREFIX):
        return
    headers[SENT_AT_HEADER] = time.time()
    decision = take_decision(STEP_TASK if celery_step else str(headers["task"]))
    if decision is not None:
        headers[ROUTE_HEADER] = decision.to_dict()


@cache
def default_app() -> Celery:
    """The process's fleet app, on the environment's configuration: made on first use."""
    return create_app()


def __getattr__(name: str) -> Celery:
    # ``from fleet.messaging.app import app`` (and ``celery -A fleet``) makes the default app
    # when first asked for, so importing this module reads no configuration.
    if name == "app":
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fleet_config(celery_app: Celery | None = None) -> FleetConfig:
    cfg: FleetConfig = getattr(celery_app or default_app(), "fleet_config")  # noqa: B009
    return cfg
