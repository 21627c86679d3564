"""Step messages held and published together (fleet.engine.publishing), on a real Redis: a
message that fails (no queue for it, or not serialisable) keeps no other from going, and
an error inside the block is the error raised, after what it held was published; a message
built to be sent later is the one Celery would publish."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
import redis
from celery._state import _task_stack
from kombu.exceptions import EncodeError

from fleet.config import FleetConfig
from fleet.engine.publishing import Held, Publisher
from fleet.errors import Unroutable
from fleet.messaging.app import app as fleet_app
from fleet.messaging.app import create_app


def _publisher(cfg: FleetConfig, redis_url: str, queue: str) -> tuple[Publisher, list[Any]]:
    broker = redis_url.rsplit("/", 1)[0] + "/7"  # a database no test fleet's worker reads
    redis.Redis.from_url(broker).delete(queue)
    app = create_app(cfg.model_copy(update={"broker_url": broker, "task_events": True}))
    fleet_app.set_current()  # create_app made its app the current one

    def route(name: str, args: Any, kwargs: dict[str, Any], *_: Any, **__: Any) -> Any:
        if kwargs.get("n") == 1:
            raise Unroutable("node 'p1': no class can run it")
        return {"queue": queue}

    app.conf.task_routes = (route,)
    failed: list[Any] = []
    return Publisher(app, lambda run_id, path, exc: failed.append((run_id, path))), failed


def _queued(redis_url: str, queue: str) -> int:
    return int(redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7").llen(queue))


def test_a_message_that_fails_keeps_no_other_from_going(cfg: FleetConfig, redis_url: str) -> None:
    publisher, failed = _publisher(cfg, redis_url, "publishing-test-a")
    with pytest.raises(EncodeError), publisher.together():
        for n in range(4):
            publisher.publish(Held("t.any", {"n": n}, {}, "r1", f"p{n}"))
        publisher.publish(Held("t.any", {"n": object()}, {}, "r1", "bad"))  # not JSON
    assert failed == [("r1", "p1")]  # the run fails naming the node it could not route
    assert _queued(redis_url, "publishing-test-a") == 3  # p0, p2, p3


def test_an_error_inside_is_raised_after_what_was_held_went_out(
    cfg: FleetConfig, redis_url: str
) -> None:
    publisher, _ = _publisher(cfg, redis_url, "publishing-test-b")
    with pytest.raises(RuntimeError, match="bookkeeping"), publisher.together():
        publisher.publish(Held("t.any", {"n": 0}, {}, "r2", "p0"))
        publisher.publish(Held("t.any", {"n": 2}, {}, "r2", "p2"))
        raise RuntimeError("the run's bookkeeping failed")
    assert _queued(redis_url, "publishing-test-b") == 2


# -- a message built to be sent later is the message Celery and kombu publish ------------

# what differs between two messages sent alike: new ids, times, the event clock
_FRESH = {"id", "root_id", "correlation_id", "delivery_tag", "fleet_sent_at", "uuid",
          "clock", "timestamp"}  # fmt: skip


def _same(value: Any) -> Any:
    """``value`` (a message or an event, JSON inside JSON decoded) less what is fresh."""
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(ValueError):
            return _same(json.loads(value))
    if isinstance(value, dict):
        return {k: "<fresh>" if k in _FRESH else _same(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same(v) for v in value]
    return value


STEP_OPTIONS = {
    "priority": 0,
    "headers": {"fleet_begin": ["r1", "a", 0, 1]},
    "shadow": "wf:a [text.upper]",
    "argsrepr": "()",
    "kwargsrepr": "{'run': 'r1', 'node': 'a'}",
}


@pytest.mark.parametrize(
    ("name", "options", "parent"),
    [
        ("t.any", STEP_OPTIONS, False),  # a client's submission
        ("t.quiet", {**STEP_OPTIONS, "priority": 7, "time_limit": 9, "soft_time_limit": 4}, True),
        ("t.quiet", {**STEP_OPTIONS, "priority": None}, True),  # the parent's, inherited
        ("t.any", {**STEP_OPTIONS, "retries": 2}, False),  # not a step's: send_task builds it
    ],
    ids=["submission", "in-a-step", "inherited-priority", "other-options"],
)
def test_a_prepared_message_is_the_one_celery_publishes(
    cfg: FleetConfig, redis_url: str, name: str, options: dict[str, Any], parent: bool
) -> None:
    """Built without send_task and kombu's producer (Publisher.prepare), the message and its
    task-sent event are those Celery publishes (to a real Redis, read back), but for their
    fresh ids and times: headers, properties, body, queue and event fields alike."""
    queue = "publishing-test-same"
    publisher, _ = _publisher(cfg, redis_url, queue)
    app = publisher.app
    app.conf.task_inherit_parent_priority = True

    @app.task(name="t.quiet", ignore_result=True, time_limit=30, shared=False)
    def quiet() -> None: ...  # registered here: send_task takes its defaults

    app.finalize(auto=True)  # (as a worker's app is)

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7")
    for stale in client.keys(f"{queue}*"):  # (a priority has a list of its own)
        client.delete(stale)
    events = client.pubsub(ignore_subscribe_messages=True)
    events.psubscribe("*celeryev*")
    held = Held(name, {"call": {"path": "a"}, "run": {"id": "r1"}}, options, "r1", "a")
    running = contextlib.ExitStack()
    running.callback(client.close)
    running.callback(events.close)
    if parent:  # inside a step's task: its ids (and priority) are the next one's parent's
        _task_stack.push(quiet)
        quiet.push_request(
            id="p-1", root_id="root-1", delivery_info={"priority": 3}, called_directly=False
        )
        running.callback(_task_stack.pop)
        running.callback(quiet.pop_request)
    with running:
        app.send_task(name, kwargs=held.kwargs, **options)
        prepared = publisher.prepare([held], events_after=False)
        later = publisher.prepare([held])  # its event held, then announced
        assert later is not None
        [key] = [k.decode() for k in client.keys(f"{queue}*")]
        sent, published = client.rpop(key).decode(), _event(events)
        publisher.announce(later.events[0])
        announced = _event(events)
    assert prepared is not None
    (lpush, (onto, message)), (publish, (topic, event)) = prepared.commands[0]
    assert (lpush, onto, publish, topic) == ("lpush", key, "publish", published["channel"])
    assert _same(json.loads(message)) == _same(json.loads(sent))
    assert _same(json.loads(event)) == _same(published["data"])
    assert [name for name, _ in later.commands[0]] == ["lpush"]
    assert announced["channel"] == published["channel"]
    assert _same(json.loads(announced["data"])) == _same(published["data"])
    body = json.loads(json.loads(message)["body"])
    assert body[1] == held.kwargs
    headers = json.loads(message)["headers"]
    limit = options.get("time_limit", 30 if name == "t.quiet" else None)  # or its task's
    assert headers["timelimit"][0] == limit
    assert (headers["parent_id"], headers["root_id"]) == (
        ("p-1", "root-1") if parent else (None, headers["id"])
    )


def _event(pubsub: Any) -> dict[str, Any]:
    """The next event published (within 2 s)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        got = pubsub.get_message(timeout=0.1)
        if got is not None:
            return {"channel": got["channel"].decode(), "data": got["data"].decode()}
    raise AssertionError("no task-sent event")


def test_a_message_prepared_in_a_task_that_keeps_its_result_is_its_child(
    cfg: FleetConfig, redis_url: str
) -> None:
    """As send_task does: what a task sends is one of the children stored with its result
    (a canvas's workflow task keeps its result); a step ignores its result, and keeps none."""
    publisher, _ = _publisher(cfg, redis_url, "publishing-test-children")
    app = publisher.app

    @app.task(name="t.kept", shared=False)
    def kept() -> None: ...

    @app.task(name="t.ignored", ignore_result=True, shared=False)
    def ignored() -> None: ...

    app.finalize(auto=True)
    children = {}
    for task in (kept, ignored):
        _task_stack.push(task)
        task.push_request(id=f"p-{task.name}", children=[], called_directly=False)
        try:
            prepared = publisher.prepare([Held("t.any", {}, dict(STEP_OPTIONS), "r", "a")])
            assert prepared is not None
            children[task.name] = [r.id for r in task.request.children]
        finally:
            task.pop_request()
            _task_stack.pop()
        sent = json.loads(prepared.commands[0][0][1][1])["headers"]["id"]
        assert children[task.name] == ([sent] if task is kept else [])
