"""What the orphan check reads in a Redis broker's queues: every message that carries a
step -- a `fleet.step`, a `celery:` step's own task (named by its headers; it was not seen,
so a long task was taken for a lost one and sent again), and the link on its way to record
a `celery:` step's end -- published by the fleet's app through kombu onto a real Redis."""

from __future__ import annotations

import json
import uuid

import redis
from celery.worker.request import Request
from kombu.message import Message

from fleet.config import FleetConfig
from fleet.constants import (
    CELERY_DONE_TASK,
    CELERY_RUN_HEADER,
    CELERY_STEP_HEADER,
    STEP_TASK,
)
from fleet.messaging.app import app as fleet_app
from fleet.messaging.app import create_app
from workers.heartbeat import _steps
from workers.orphans import in_flight
from workers.tasks import ping


def test_every_message_that_carries_a_step_is_seen(redis_url: str, cfg: FleetConfig) -> None:
    app = create_app(cfg.model_copy(update={"broker_url": redis_url, "result_backend": ""}))
    queue = f"orphans-{uuid.uuid4().hex[:8]}"
    step = {
        "call": {"path": "a", "op": "text.upper", "kind": "compute", "classes": ["cpu"]},
        "run": {"id": "r1"},
    }
    app.send_task(STEP_TASK, kwargs=step, queue=queue)
    headers = {CELERY_STEP_HEADER: "b", CELERY_RUN_HEADER: "r1"}
    app.send_task("usertasks.nap", kwargs={"text": "x"}, headers=headers, queue=queue)
    end = {"call": {"path": "c"}, "run": {"id": "r1"}, "sent_at": 0.0}
    app.send_task(CELERY_DONE_TASK, args=(3,), kwargs=end, queue=queue)
    app.send_task("usertasks.shout", kwargs={"text": "plain"}, queue=queue)  # no step
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(queue) == 4
        assert in_flight(client, [queue], "unacked-none") == {("r1", "a"), ("r1", "b"), ("r1", "c")}
    finally:
        client.delete(queue)


def _request(name: str, kwargs: dict[str, object], headers: dict[str, str]) -> Request:
    """A request as a worker holds it, from a message the fleet's app made."""
    made = fleet_app.amqp.as_task_v2(uuid.uuid4().hex, name, kwargs=kwargs)
    message = Message(  # type: ignore[no-untyped-call]
        body=json.dumps(made.body),
        headers={**made.headers, **headers},
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info={"routing_key": "cpu", "exchange": ""},
        properties=made.properties,
    )
    return Request(message, app=fleet_app, task=ping)


def test_a_workers_heartbeat_names_the_celery_steps_it_holds() -> None:
    """A message acknowledged on receipt, or waiting in the worker's timer for its retry's
    countdown, is in no broker list: the heartbeat's list is what the check sees of it."""
    held = [
        _request(STEP_TASK, {"call": {"path": "a"}, "run": {"id": "r1"}}, {}),
        _request(
            "usertasks.nap", {"text": "x"}, {CELERY_STEP_HEADER: "b", CELERY_RUN_HEADER: "r1"}
        ),
        _request("usertasks.shout", {"text": "plain"}, {}),
    ]
    assert _steps(held) == [("r1", "a"), ("r1", "b")]
