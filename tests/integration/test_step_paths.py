"""Every way a step runs gets a fleet step's guarantees (issue 41): a `celery:` step's task
and a canvas node (`fleet.node`) take the start lease and pass the worker's own trust check,
the orphan check knows a `celery:` step's message, and a run whose next step has nowhere to
go fails naming the node instead of hanging."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.constants import NODE_TASK, ORPHANS_SENT_KEY
from fleet.engine.dispatch import celery_task_id
from fleet.errors import WorkflowFailed
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _trusting_client() -> Fleet:
    """A client whose own configuration trusts io with confidential data (the workers'
    configuration, tests/fleet-test.toml, trusts no class with it)."""
    base = Fleet().cfg
    classes = {
        name: spec.model_copy(update={"trusted_for": ["confidential"] if name == "io" else []})
        for name, spec in base.classes.items()
    }
    lenient = base.model_copy(update={"classes": classes})
    return Fleet(app=create_app(lenient), cfg=lenient)


def _runs(trace: list[Any], node: str) -> int:
    return sum(1 for e in trace if e.node == node and e.status == "succeeded")


def test_a_long_celery_step_is_not_taken_for_a_lost_one(client: Fleet, broker: redis.Redis) -> None:
    """A `celery:` task running longer than the orphan check's grace (4 s + 4 s here; 43 s
    with the default timings) runs once: its message and its worker's heartbeat name its
    step. The task's id is the same whenever the step is sent, and the step's idempotency
    key is there (fleet.sdk.current_step) for the task to protect itself."""
    text = uuid.uuid4().hex
    wf = Workflow("celery-long", inputs=["t"])
    nap = wf.step("nap", "celery:usertasks.nap", text=wf.input("t"), seconds=14.0)
    wf.output("out", nap["result"])
    run = client.submit(wf, {"t": text})
    assert run.get(timeout=90) == {"out": text}
    starts = [json.loads(s) for s in broker.lrange(f"usertasks:nap:{text}", 0, -1)]
    assert starts == [{"id": celery_task_id(run.id, "nap"), "key": f"{run.id}:nap"}]
    assert not broker.hexists(ORPHANS_SENT_KEY, f"{run.id}|nap")


def test_a_celery_step_meets_the_workers_own_trust_check(local_fleet: object) -> None:
    """A client that trusts io with confidential data pins such a `celery:` step to io: the
    io worker's own configuration refuses it, as it refuses an op step, before the task runs."""
    client = _trusting_client()
    wf = Workflow("celery-secret", inputs=["t"])
    count = wf.step("count", "celery:shop.count_words", text=wf.input("t"), classes=["io"])
    wf.output("out", count["result"])
    spec = wf.spec()
    spec.sensitivity = "confidential"
    run = client.submit(spec, {"t": "patient record"})
    with pytest.raises(WorkflowFailed, match=r"node 'count'.*does not trust class 'io' with it"):
        run.get(timeout=60)
    trace = [(e.node, e.cls, e.status) for e in run.trace()]
    assert trace == [("count", "io", "failed")]
    assert run.info().outputs is None


def _later_node_confidential(wf: Workflow, node: str) -> Any:
    spec = wf.spec()
    for n in spec.nodes:
        if n.name == node:
            n.sensitivity = "confidential"
    return spec


def test_a_node_the_workers_config_leaves_no_class_fails_its_run(local_fleet: object) -> None:
    """The client placed every node; the workers' configuration leaves the second none (its
    data is confidential, and they trust no class with it): the run fails naming that node
    (it stayed `running`: the router raised IndexError, and so did the orphan check's copy)."""
    client = _trusting_client()
    wf = Workflow("no-class-later", inputs=["t"])
    first = wf.step("first", "text.upper", text=wf.input("t"), classes=["io"])
    second = wf.step("second", "text.normalize", text=first["text"], classes=["io"])
    wf.output("out", second["text"])
    run = client.submit(_later_node_confidential(wf, "second"), {"t": "x"})
    with pytest.raises(WorkflowFailed, match=r"node 'second' \(op text.normalize\): no class"):
        run.get(timeout=30)
    assert run.info().error_node == "second"


def test_a_canvas_node_with_no_class_fails_the_canvas_naming_it(local_fleet: object) -> None:
    """The same in a canvas: a map node's steps have no class on the workers' side; the caller
    gets WorkflowFailed naming the node (it got a bare IndexError)."""
    client = _trusting_client()
    wf = Workflow("no-class-canvas", inputs=["t", "words"])
    first = wf.step("first", "text.upper", text=wf.input("t"), classes=["io"])
    loud = wf.step("loud", "text.upper", text=wf.input("words"), map="text", classes=["io"])
    wf.output("out", loud["text"])
    wf.output("first", first["text"])
    spec = _later_node_confidential(wf, "loud")
    canvas = client.to_canvas(spec, {"t": "x", "words": ["a", "b"]})
    with pytest.raises(WorkflowFailed, match=r"node 'loud\[0\]' \(op text.upper\): no class"):
        canvas.apply_async().get(timeout=30)


def test_a_canvas_node_sent_again_while_it_runs_runs_once(client: Fleet) -> None:
    """The same `fleet.node` message sent again while the node runs: the copy finds the
    node's start lease held and does not run the op (it ran it a second time)."""
    wf = Workflow("canvas-once", inputs=["v"])
    nap = wf.step("nap", "test.sleep", seconds=4.0, value=wf.input("v"), classes=["io"])
    wf.output("out", nap["value"])
    canvas = client.to_canvas(wf, {"v": "once"})
    result = canvas.apply_async()
    node = canvas.tasks[1]  # type: ignore[attr-defined]
    time.sleep(1.5)  # the start is a few ms; the node runs for 4 s
    client.app.send_task(NODE_TASK, kwargs=node.kwargs, task_id=result.parent.id)
    assert result.get(timeout=30) == {"out": "once"}
    time.sleep(4.0)  # the copy, had it run, would have ended by now
    assert _runs(client.handle(node.kwargs["run"]["id"]).trace(), "nap") == 1
