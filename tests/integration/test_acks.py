"""A worker on Celery's event loop sends the acknowledgements of one turn of its loop in one
round trip (fleet.messaging.transport.QoS), and leaves no message unacknowledged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = pytest.mark.integration


def _transactions(client: redis.Redis) -> int:
    """MULTI blocks Redis has run: kombu makes one for each message it takes in (its
    unacknowledged record) and one for each acknowledgement it sends."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_multi", {}).get("calls", 0))


def test_acknowledgements_of_a_turn_go_together_and_none_is_left(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """Two steps side by side, then their join: each of the two reads the run's state as
    it records (what follows is decided after), so its message is left to the loop to
    acknowledge; the join ends the run, and its record acknowledges its own."""
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("acks", inputs=["v"])
    left = wf.step("left", "math.add", a=wf.input("v"), b=1, classes=["io"])
    right = wf.step("right", "math.add", a=wf.input("v"), b=2, classes=["io"])
    both = wf.step("both", "math.add", a=left["result"], b=right["result"], classes=["io"])
    wf.output("v", both["result"])
    with LocalFleet(cfg, ["io"], False, tmp_path, "INFO", lambda _: None):
        client = Fleet(create_app(cfg), cfg)
        assert client.submit(wf, {"v": 0}).get(timeout=30) == {"v": 3}
        broker = redis.Redis.from_url(cfg.broker_url)
        before = _transactions(broker)
        runs = client.submit_many(wf, [{"v": i} for i in range(100)])
        assert [r.get(timeout=60) for r in runs] == [{"v": 2 * i + 3} for i in range(100)]
        deadline = time.monotonic() + 10
        while broker.hlen("unacked") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.hlen("unacked") == 0  # every message acknowledged
        sent_acks = _transactions(broker) - before - 300  # less one a message taken in
        assert 0 < sent_acks < 200, sent_acks  # the loop's; kombu alone: 200, one each


def test_a_warm_shutdown_leaves_no_finished_step_unacknowledged(
    fleet_cfg: FleetConfig, tmp_path: Path, redis_url: str
) -> None:
    """Steps that finish while the worker stops are acknowledged as the loop closes (they
    were held for a turn that never came, and given out again an hour later). The broker
    is the tests' own Redis (a database of its own), so it outlives the fleet."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    cfg = fleet_cfg.model_copy(update={"broker_url": url})
    wf = Workflow("warm-stop", inputs=["v"])
    nap = wf.step("nap", "test.sleep", seconds=2.0, value=wf.input("v"), classes=["io"])
    wf.output("v", nap["value"])
    fleet = LocalFleet(cfg, ["io"], False, tmp_path, "INFO", lambda _: None)
    fleet.start()
    try:
        client = Fleet(create_app(cfg), cfg)
        runs = client.submit_many(wf, [{"v": i} for i in range(6)])
        broker = redis.Redis.from_url(cfg.broker_url)
        deadline = time.monotonic() + 30
        while broker.hlen("unacked") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.hlen("unacked") == 6  # all six running
    finally:
        fleet.stop(grace=20)  # warm: the steps finish, then the worker exits
    assert [r.status() for r in runs] == ["succeeded"] * 6
    assert broker.hlen("unacked") == 0
