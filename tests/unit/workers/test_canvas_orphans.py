"""What the orphan check reads of a canvas run (workers/canvas_orphans.py), from real
messages the fleet's app publishes through kombu onto a real Redis: the id of the canvas's
``fleet.canvas_finish`` (its result, which the caller waits on) in the chain the first task
carries -- chords' bodies included -- and the canvas's own messages counted as its run in
flight."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from celery import chain

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import CANVAS_FINISH_TASK
from fleet.messaging.app import create_app
from tests.support.queues import message_body
from workers.canvas_orphans import finish_id
from workers.orphans import in_flight


def _published(client: redis.Redis, queue: str) -> list[Any]:
    lists = client.keys(f"{queue}*")  # the queue, or a priority's list of it
    return [json.loads(raw) for name in lists for raw in client.lrange(name, 0, -1)]


def test_the_canvas_finish_is_found_in_the_chain_its_first_task_carries(
    redis_url: str, cfg: FleetConfig
) -> None:
    cfg = cfg.model_copy(update={"broker_url": redis_url, "result_backend": ""})
    app = create_app(cfg)
    fleet = Fleet(app=app, cfg=cfg)
    wf = Workflow("canvas-ids", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"))
    b = wf.step("b", "text.normalize", text=a["text"])  # b and c: a group, then a chord
    c = wf.step("c", "text.stats", text=a["text"])
    wf.output("out", wf.step("d", "text.upper", text=b["text"])["text"])
    wf.output("n", c["words"])
    canvas = fleet.to_canvas(wf, {"t": "x"})
    first, *rest = canvas.tasks  # type: ignore[attr-defined]
    run_id = first.kwargs["run"]["id"]
    queue = f"canvas-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        result = chain(first.clone(queue=queue), *rest).apply_async()
        (message,) = _published(client, queue)
        body = message_body(message)
        _, _, embed = body
        assert finish_id(embed["chain"], run_id) == result.id  # the id the caller waits on
        assert finish_id(embed["chain"], "another-run") == ""
        assert in_flight(client, [queue], "unacked-none") == {(run_id, "")}  # the run's own
    finally:
        for name in client.keys(f"{queue}*"):
            client.delete(name)


def test_a_canvas_node_and_its_finish_are_its_run_in_flight(
    redis_url: str, cfg: FleetConfig
) -> None:
    app = create_app(cfg.model_copy(update={"broker_url": redis_url, "result_backend": ""}))
    queue = f"canvas-{uuid.uuid4().hex[:8]}"
    call = {"path": "a", "op": "text.upper", "kind": "compute", "classes": ["cpu"]}
    app.send_task("fleet.node", kwargs={"call": call, "run": {"id": "r1"}}, queue=queue)
    app.send_task(CANVAS_FINISH_TASK, kwargs={"run": {"id": "r2"}}, queue=queue)
    client = redis.Redis.from_url(redis_url)
    try:
        assert in_flight(client, [queue], "unacked-none") == {("r1", "a"), ("r2", "")}
    finally:
        for name in client.keys(f"{queue}*"):
            client.delete(name)
