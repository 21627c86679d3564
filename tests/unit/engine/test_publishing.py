"""Step messages held and published together (fleet.engine.publishing), on a real Redis: a
message that fails (no queue for it, or not serialisable) keeps no other from going, and
an error inside the block is the error raised, after what it held was published."""

from __future__ import annotations

from typing import Any

import pytest
import redis
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
