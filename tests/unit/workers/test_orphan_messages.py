"""What the orphan check reads in a Redis broker's queues: every message that carries a
step -- a `fleet.step`, a `celery:` step's own task (named by its headers; it was not seen,
so a long task was taken for a lost one and sent again), and the link on its way to record
a `celery:` step's end -- published by the fleet's app through kombu onto a real Redis."""

from __future__ import annotations

import uuid

import redis

from fleet.config import FleetConfig
from fleet.constants import (
    CELERY_DONE_TASK,
    CELERY_RUN_HEADER,
    CELERY_STEP_HEADER,
    STEP_TASK,
)
from fleet.messaging.app import create_app
from workers.orphans import in_flight


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
