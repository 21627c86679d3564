"""The worker's consumer (workers.consumer) holds task events for ``event_flush_s`` and
publishes them together; what it holds is published, not dropped, when the broker
connection is lost (Celery then starts a new event dispatcher) or the worker stops."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.events import Events
from kombu.asynchronous import Hub

from fleet.config import FleetConfig
from workers.consumer import Consumer


def _consumer(cfg: FleetConfig) -> tuple[Consumer, Events]:
    """A consumer with what its Events step uses: a real app (in-memory broker), a real
    (not running) event loop, and its event dispatcher started as a worker starts it."""
    app = Celery("events-test", broker="memory://")
    app.fleet_config = cfg.model_copy(update={"event_flush_s": 0.05})  # type: ignore[attr-defined]
    consumer: Any = Consumer.__new__(Consumer)
    consumer.app, consumer.hub, consumer.hostname = app, Hub(), "io@test"
    consumer.amqheartbeat, consumer.event_dispatcher = 0, None
    consumer.connection_for_write = lambda heartbeat=None: app.connection_for_write()
    step = Events(consumer, task_events=True)
    step.start(consumer)
    return consumer, step


def test_events_wait_for_one_publish_and_a_lost_connection_publishes_them(
    cfg: FleetConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, step = _consumer(cfg)
    published: list[list[dict[str, Any]]] = []
    record = lambda self, batch, *a, **k: published.append(list(batch))  # noqa: E731
    monkeypatch.setattr(EventDispatcher, "_publish", record)  # every dispatcher's
    dispatcher = consumer.event_dispatcher
    for i in range(3):
        dispatcher.send("task-succeeded", uuid=str(i))
    assert published == []  # held: one publish asked for, event_flush_s later
    assert len(consumer.hub._ready) == 1  # the one request to the loop, not one an event
    monkeypatch.setattr(CeleryConsumer, "on_close", lambda self: None)  # its request cleanup
    consumer.on_close()  # the broker connection was lost
    assert published == []  # nothing published on a connection that may hang
    step.start(consumer)  # Celery's reconnection: a new dispatcher publishes what it kept
    assert [[e["uuid"] for e in batch] for batch in published] == [["0", "1", "2"]]


def test_a_stopping_worker_publishes_what_it_holds(
    cfg: FleetConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, _ = _consumer(cfg)
    published: list[list[dict[str, Any]]] = []
    consumer.event_dispatcher._publish = lambda batch, *a, **k: published.append(list(batch))
    consumer.event_dispatcher.send("task-received", uuid="a")
    monkeypatch.setattr(CeleryConsumer, "stop", lambda self: None)  # its blueprint's stop
    consumer.stop()
    assert [[e["uuid"] for e in batch] for batch in published] == [["a"]]
