"""task_events (FLEET_TASK_EVENTS): one setting turns Celery's task events off for the
fleet's workers and its clients alike -- what a fleet watched without Flower saves."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app
from tests.support.queues import message_body

pytestmark = pytest.mark.integration


def _listen(url: str, pattern: str, stop: threading.Event, keep: Callable[[Any], None]) -> None:
    """Every message published to a channel matching ``pattern``, until ``stop``."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.psubscribe(pattern)
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            keep(message)
    pubsub.close()


@pytest.mark.parametrize("on", [True, False], ids=["events on", "events off"])
def test_one_setting_turns_task_events_on_or_off(
    fleet_cfg: FleetConfig, tmp_path: Path, on: bool
) -> None:
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "task_events": on}
    )
    env = {"FLEET_TASK_EVENTS": "1" if on else "0"}
    wf = Workflow("two", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"), classes=["cpu"])
    wf.output("t", wf.step("b", "text.upper", text=a["text"], classes=["cpu"])["text"])
    with LocalFleet(cfg, ["cpu"], False, tmp_path, "INFO", lambda _: None, env):
        client = Fleet(create_app(cfg), cfg)
        client.submit(wf, {"t": "warm"}).get(timeout=30)
        seen: list[str] = []
        stop = threading.Event()
        channel = lambda m: seen.append(m["channel"].decode())  # noqa: E731
        listener = threading.Thread(
            target=_listen, args=(cfg.broker_url, "*celeryev*", stop, channel)
        )
        listener.start()
        time.sleep(0.3)
        for i in range(3):
            assert client.submit(wf, {"t": f"x{i}"}).get(timeout=30) == {"t": f"X{i}"}
        time.sleep(0.5)
        stop.set()
        listener.join(5)
    task = [c for c in seen if "celeryev/task." in c]
    if on:  # each step's task-sent (from its sender), and the workers' own (grouped: multi)
        assert task.count("/0.celeryev/task.sent") >= 6, seen
        assert any(c != "/0.celeryev/task.sent" for c in task), seen
    else:
        assert task == [], seen


def _events(data: bytes) -> list[dict[str, Any]]:
    """The events one publish of a worker's carried (kombu's message)."""
    return list(message_body(json.loads(data)))


@pytest.mark.parametrize("flush_s", [0.05, 0.0], ids=["batched", "celery's timing"])
def test_a_worker_publishes_its_task_events_in_batches_and_loses_none(
    fleet_cfg: FleetConfig, tmp_path: Path, flush_s: float
) -> None:
    """event_flush_s: every event buffered within it goes in one publish (a busy worker's
    loop published one or two at a time); every step's events still arrive, in order."""
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "event_flush_s": flush_s}
    )
    env = {"FLEET_TASK_EVENTS": "1", "FLEET_EVENT_FLUSH_S": str(flush_s)}
    wf = Workflow("one", inputs=["t"])
    wf.output("t", wf.step("a", "text.upper", text=wf.input("t"), classes=["io"])["text"])
    with LocalFleet(cfg, ["io"], False, tmp_path, "INFO", lambda _: None, env):
        client = Fleet(create_app(cfg), cfg)
        client.submit(wf, {"t": "warm"}).get(timeout=30)
        time.sleep(0.5)
        batches: list[list[dict[str, Any]]] = []
        stop = threading.Event()
        events = lambda m: batches.append(_events(m["data"]))  # noqa: E731
        listener = threading.Thread(
            target=_listen, args=(cfg.broker_url, "*celeryev/task.multi*", stop, events)
        )
        listener.start()
        time.sleep(0.3)
        for i in range(30):  # one at a time: the loop turns for each
            assert client.submit(wf, {"t": f"x{i}"}).get(timeout=30) == {"t": f"X{i}"}
        time.sleep(0.5 + flush_s)
        stop.set()
        listener.join(5)
    events = [e for batch in batches for e in batch]
    by_task: dict[str, list[str]] = {}
    for event in events:
        by_task.setdefault(event["uuid"], []).append(event["type"])
    assert len(by_task) == 30, by_task
    for types in by_task.values():
        assert types == ["task-received", "task-started", "task-succeeded"], by_task
    if flush_s:
        assert len(batches) * 6 <= len(events), [len(b) for b in batches]
    else:
        assert len(batches) * 2 > len(events), [len(b) for b in batches]  # Celery's timing
