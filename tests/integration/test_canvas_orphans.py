"""A canvas run whose message the broker lost fails, naming the loss, instead of hanging
(issue 41, from docs/reliability.md's "not done yet": the orphan check watched engine runs
only). The loss is made on purpose: the node's message is sent to a queue no worker reads
and deleted there, as a Redis restart between kombu's BRPOP and its unacked record would."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from celery import chain

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.constants import CANVAS_RUNS_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_canvas_whose_message_was_lost_fails_instead_of_hanging(
    client: Fleet, broker: redis.Redis
) -> None:
    wf = Workflow("canvas-lost", inputs=["t"])
    up = wf.step("up", "text.upper", text=wf.input("t"), classes=["cpu"])
    wf.output("out", up["text"])
    canvas = client.to_canvas(wf, {"t": "lost"})  # start, up, finish
    start, node, finish = canvas.tasks  # type: ignore[attr-defined]
    run_id = start.kwargs["run"]["id"]
    nowhere = f"lost-{uuid.uuid4().hex[:8]}"
    result = chain(start, node.clone(queue=nowhere), finish).apply_async()
    deadline, lists = time.monotonic() + 30, []
    while not lists and time.monotonic() < deadline:  # the queue, or a priority's list of it
        lists = broker.keys(f"{nowhere}*")
        time.sleep(0.02)
    assert broker.delete(*lists) == 1  # the broker lost it, and the rest of the canvas
    assert broker.hexists(CANVAS_RUNS_KEY, run_id)  # watched since its start
    with pytest.raises(Exception, match="a message of its canvas was lost by the broker"):
        result.get(timeout=60)  # on the old code: waited for ever (here, 60 s)
    handle = client.handle(run_id)
    assert handle.status() == "failed"
    assert not broker.hexists(CANVAS_RUNS_KEY, run_id)


def test_a_canvas_that_runs_is_left_alone(client: Fleet, broker: redis.Redis) -> None:
    """A canvas node held by a worker past the check's age and grace (9 s against 4 + 4 s) is
    a message in flight: the run is not failed, and ends unwatched."""
    wf = Workflow("canvas-slow", inputs=["t"])
    nap = wf.step("nap", "test.sleep", seconds=9.0, value=wf.input("t"), classes=["io"])
    wf.output("out", nap["value"])
    canvas = client.to_canvas(wf, {"t": "slow"})
    run_id = canvas.tasks[0].kwargs["run"]["id"]  # type: ignore[attr-defined]
    assert canvas.apply_async().get(timeout=60) == {"out": "slow"}
    assert client.handle(run_id).status() == "succeeded"
    time.sleep(5)  # the next check finds it ended: no longer watched
    assert not broker.hexists(CANVAS_RUNS_KEY, run_id)
