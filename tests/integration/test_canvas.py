"""Workflows inside Celery canvas, on real workers: a workflow signature after and before
plain tasks in a chain, in a group, in a chord; the chained-value rule; errors."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from celery import chain, chord, group

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.errors import WorkflowFailed, WorkflowValidationError
from fleet.workflow.builder import Workflow
from tests.support import usertasks

pytestmark = pytest.mark.integration


def _upper_flow() -> Workflow:
    wf = Workflow("canvas-upper", inputs=["t"])
    clean = wf.step("clean", "text.normalize", text=wf.input("t"))
    loud = wf.step("loud", "text.upper", text=clean["text"])
    wf.output("out", loud["text"])
    return wf


def test_workflow_signature_between_plain_tasks_in_a_chain(client: Fleet) -> None:
    wf = _upper_flow()
    canvas = chain(usertasks.shout.s("  hello   canvas "), wf.s(), usertasks.wrap.s(prefix="got "))
    result = canvas.apply_async()
    assert result.get(timeout=30) == "got <HELLO CANVAS>"
    # The workflow's own task: its result is the outputs, its id the run's id, with a trace.
    run_id = result.parent.id
    assert result.parent.get(timeout=5) == {"out": "HELLO CANVAS"}
    run = client.handle(run_id)
    assert run.status() == "succeeded"
    assert {e.node for e in run.trace() if e.status == "succeeded"} == {"clean", "loud"}


def test_a_chained_dict_fills_inputs_by_name(client: Fleet) -> None:
    result = chain(usertasks.ticket.s("a  b"), _upper_flow().s()).apply_async()
    assert result.get(timeout=30) == {"out": "A B"}


def test_group_and_chord_of_workflow_signatures(client: Fleet) -> None:
    wf = _upper_flow()
    together = group(wf.s(t="one"), wf.s(t="two")).apply_async()
    assert together.get(timeout=30) == [{"out": "ONE"}, {"out": "TWO"}]
    joined = chord([wf.s(t="x"), wf.s(t="y"), wf.s(t="z")], usertasks.merge.s())
    assert joined.apply_async().get(timeout=30) == "X+Y+Z"


def test_signature_options_and_immutable_signatures(client: Fleet) -> None:
    wf = _upper_flow()
    sig = client.signature(wf, {"t": "later"}, immutable=True, sla_s=30.0)
    started = time.time()
    result = chain(usertasks.shout.s("ignored"), sig).apply_async()
    assert result.get(timeout=30) == {"out": "LATER"}
    delayed = wf.si(t="soon").apply_async(countdown=1)
    assert delayed.get(timeout=30) == {"out": "SOON"}
    assert client.handle(delayed.id).info().submitted_at >= started + 1  # type: ignore[union-attr]


def test_bad_inputs_fail_before_sending_or_name_the_workflow(client: Fleet) -> None:
    wf = _upper_flow()
    with pytest.raises(WorkflowValidationError, match="unknown workflow input 'bogus'"):
        wf.s(bogus=1)
    with pytest.raises(WorkflowValidationError, match="missing workflow input 't'"):
        wf.si()
    stray = chain(usertasks.stray.s("x"), wf.s()).apply_async()
    with pytest.raises(WorkflowValidationError, match=r"(?s)canvas-upper.*colour.*not inputs"):
        stray.get(timeout=30)


def test_a_failed_run_fails_the_chain_and_calls_errbacks(
    client: Fleet, fleet_cfg: FleetConfig
) -> None:
    wf = Workflow("canvas-fails", inputs=["t"])
    wf.step("bad", "test.fail", message=wf.input("t"))
    wf.output("out", wf.step("after", "text.upper", text=wf.input("t"))["text"])
    key = f"test:errback:{uuid.uuid4().hex}"
    sig = wf.s().on_error(usertasks.note_failure.s(key=key))
    result = chain(usertasks.shout.s("no"), sig, usertasks.wrap.s()).apply_async()
    with pytest.raises(WorkflowFailed, match="node 'bad'"):
        result.get(timeout=30)
    backend = redis.Redis.from_url(fleet_cfg.backend_url, decode_responses=True)
    deadline = time.time() + 10
    while backend.get(key) is None and time.time() < deadline:
        time.sleep(0.1)
    assert backend.get(key) == result.parent.id
    assert client.handle(result.parent.id).status() == "failed"


# -- existing Celery tasks as steps ------------------------------------------------------


def test_a_celery_task_as_a_step_runs_where_routed_and_feeds_the_next(client: Fleet) -> None:
    wf = Workflow("celery-step", inputs=["t"])
    counted = wf.step(
        "count", "celery:usertasks.words", text=wf.input("t"), classes=["cpu"], outputs=["count"]
    )
    said = wf.step("say", "text.template", template="${n} words", n=counted["count"])
    wf.output("out", said["text"])
    wf.output("words", counted["result"])
    run = client.submit(wf, {"t": "one two three"})
    assert run.get(timeout=30) == {
        "out": "3 words",
        "words": {"words": ["one", "two", "three"], "count": 3},
    }
    step = next(e for e in run.trace() if e.node == "count")
    assert (step.op, step.status, step.cls, step.queue) == (
        "celery:usertasks.words",
        "succeeded",
        "cpu",
        "cpu",
    )
    assert step.worker is not None and step.worker.startswith("cpu@")
    assert step.route["cls"] == "cpu" and step.wait_s is not None and step.run_s >= 0


def test_a_celery_step_from_yaml_inside_a_workflow_signature(client: Fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "shout.yaml"
    path.write_text(
        "name: yaml-celery\n"
        "inputs: [t]\n"
        "nodes:\n"
        "  - name: loud\n"
        "    op: celery:usertasks.shout\n"
        "    inputs: {text: inputs.t}\n"
        "outputs: {out: loud.result}\n"
    )
    from fleet.client.client import signature

    result = chain(usertasks.ticket.s("quiet"), signature(str(path))).apply_async()
    assert result.get(timeout=30) == {"out": "QUIET"}


def test_a_failing_celery_task_fails_its_run_naming_node_and_error(client: Fleet) -> None:
    wf = Workflow("celery-boom", inputs=["t"])
    wf.output("out", wf.step("b", "celery:usertasks.boom", text=wf.input("t"))["result"])
    run = client.submit(wf, {"t": "x"})
    with pytest.raises(WorkflowFailed, match=r"node 'b'.*ValueError: boom on 'x'"):
        run.get(timeout=30)


def test_unknown_or_malformed_celery_tasks_fail_before_sending(client: Fleet) -> None:
    wf = Workflow("celery-missing", inputs=["t"])
    wf.output("out", wf.step("m", "celery:usertasks.nope", text=wf.input("t"))["result"])
    with pytest.raises(
        WorkflowValidationError, match=r"node 'm'.*no live worker.*'usertasks.nope'"
    ):
        client.submit(wf, {"t": "x"})
    with pytest.raises(WorkflowValidationError, match=r"usertasks\.nope"):
        wf.s(t="x")
    bad = Workflow("celery-malformed", inputs=["t"])
    bad.output("out", bad.step("m", "celery:not a name", text=bad.input("t"))["result"])
    with pytest.raises(WorkflowValidationError, match="'not a name' is not a Celery task name"):
        client.submit(bad, {"t": "x"})
