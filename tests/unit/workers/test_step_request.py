"""A step's request in the worker's main process (workers/recovery.py ``StepRequest``), on
real messages taken through the fleet's transport from a real Redis: a ``fleet.step`` whose
result says its record acknowledged its message is not acknowledged in Redis again; any
other result, and any other task's, is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.concurrency.solo import TaskPool
from celery.worker.request import create_request_cls
from kombu import Message

from fleet.config import load_config
from fleet.constants import STEP_TASK
from fleet.messaging.app import create_app
from tests.support.consuming import take
from workers import tasks
from workers.recovery import StepRequest

OTHER = "request-test.other"  # another task with the step's request class (a canvas node's)


@pytest.fixture(scope="module")
def app() -> Celery:
    fleet_app = create_app(load_config())

    @fleet_app.task(name=OTHER, Request=StepRequest, shared=False)  # (this app's alone)
    def other(**_: Any) -> None:
        return None

    return fleet_app


@pytest.fixture
def channel(app: Celery) -> Iterator[Any]:
    with app.connection_for_write() as conn:
        yield conn.default_channel


def _taken(channel: Any, task: str) -> Message:
    """A message of ``task``, taken off its queue through ``channel`` as a worker takes it
    (recorded in kombu's unacknowledged record)."""
    sender = Celery("request-test", broker=channel.connection.client.as_uri(True))
    queue = f"request-{uuid.uuid4().hex[:8]}"
    sender.send_task(task, kwargs={"call": {"path": "a"}, "run": {"id": "r"}}, queue=queue)
    return take(channel, queue)


def _succeed(app: Celery, message: Message, result: str) -> None:
    """The worker's main process told that the task of ``message`` returned ``result``
    (as Celery hands it back: its repr)."""
    task = app.tasks[message.headers["task"]]
    request_cls = create_request_cls(StepRequest, task, TaskPool(), "w@test", None, app=app)
    request = request_cls(message, on_ack=message.ack_log_error, app=app, task=task)
    request.on_success((0, result, 0.01))


@pytest.mark.parametrize(
    ("task", "result", "again"),
    [
        (STEP_TASK, "{'node': 'a', 'acked': True}", False),  # its record acknowledged it
        (STEP_TASK, "{'node': 'a'}", True),  # its record did not (the state was read)
        (STEP_TASK, "{'node': 'aaaa...', ...}", True),  # cut short: not to be trusted
        (OTHER, "{'id': 7, 'acked': True}", True),  # (a canvas node's own outputs)
    ],
)
def test_only_a_step_whose_record_acknowledged_it_skips_the_round_trip(
    app: Celery, channel: Any, client: redis.Redis, task: str, result: str, again: bool
) -> None:
    assert tasks.step.name == STEP_TASK
    message = _taken(channel, task)
    tag = message.delivery_tag
    assert client.hexists("unacked", tag)
    _succeed(app, message, result)
    channel.connection.client.transport._send_held_acks()  # (a loop's turn ending)
    assert message.acknowledged
    # acknowledged in Redis by the main process -- or left to the record, which (here, with
    # no record) leaves the entry in place
    assert client.hexists("unacked", tag) is not again
    assert not channel.qos._acked_elsewhere
    client.hdel("unacked", tag)
    client.zrem("unacked_index", tag)
