"""Workflows inside Celery canvas, on real workers: a workflow signature after and before
plain tasks in a chain, in a group, in a chord; the chained-value rule; errors."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Signature, chain, chord, group

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.errors import StepFailed, WorkflowFailed, WorkflowValidationError
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


# -- a workflow compiled to canvas -------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "fleet" / "examples"


def _both_ways(client: Fleet, wf: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run ``wf`` with ``submit`` and as its canvas; the outputs must be the same."""
    submitted = client.submit(wf, inputs).get(timeout=60)
    canvas = client.to_canvas(wf, inputs)
    assert isinstance(canvas, Signature)
    as_canvas = canvas.apply_async().get(timeout=60)
    assert as_canvas == submitted
    return dict(as_canvas)


def _loop_and_map() -> Workflow:
    body = Workflow("round", inputs=["n"])
    step = body.step("inc", "math.add", a=body.input("n"), b=1)
    body.output("n", step["result"])
    wf = Workflow("loop-and-map", inputs=["words"])
    rounds = wf.loop("rounds", body, max_iterations=5, until=step["result"] >= 3, n=0)
    loud = wf.step("loud", "text.upper", text=wf.input("words"), map="text")
    joined = wf.step("joined", "text.join", parts=loud["text"], sep="-")
    wf.output("n", rounds["n"])
    wf.output("rounds", rounds["iterations"])
    wf.output("joined", joined["text"])
    return wf


def test_canvas_gives_the_outputs_submit_gives(client: Fleet) -> None:
    triage = EXAMPLES / "triage.yaml"
    urgent = _both_ways(client, triage, {"ticket": "My blender arrived BROKEN, refund please"})
    assert urgent["decision"].startswith("ESCALATE")
    routine = _both_ways(client, triage, {"ticket": "thanks, all good"})
    assert routine["decision"].startswith("routine")
    _both_ways(client, EXAMPLES / "sleeps.yaml", {"tag": "t"})
    out = _both_ways(client, _loop_and_map(), {"words": ["a", "b", "c"]})
    assert out == {"n": 3, "rounds": 3, "joined": "A-B-C"}


def test_the_canvas_is_chains_groups_and_chords_of_routed_steps(client: Fleet) -> None:
    canvas = client.to_canvas(EXAMPLES / "triage.yaml", {"ticket": "where is my order"})
    tasks = canvas.tasks  # type: ignore[attr-defined]
    assert tasks[0].task == "fleet.canvas_start" and tasks[-1].task == "fleet.canvas_finish"
    assert tasks[1].kwargs["call"]["path"] == "clean"
    fan_out = tasks[2]
    assert isinstance(fan_out, group)
    assert {t.kwargs["call"]["path"] for t in fan_out.tasks} == {
        "keywords",
        "stats",
        "urgent",
        "lookup",
    }
    result = canvas.apply_async()
    assert result.get(timeout=60)["decision"].startswith("routine")
    run = client.handle(tasks[0].kwargs["run"]["id"])
    assert run.status() == "succeeded"
    trace = run.trace()
    steps = {e.node: e for e in trace if e.status == "succeeded"}
    assert steps["stats"].cls == "npu-lite" and steps["stats"].route["cls"] == "npu-lite"
    assert steps["lookup"].cls == "io" and steps["clean"].cls == "cpu"
    assert {e.node for e in trace if e.status == "skipped"} == {"escalate"}
    # the join waited for the whole fan-out: a chord
    assert steps["routine"].started_at >= max(
        steps[n].ended_at for n in ("keywords", "stats", "urgent", "lookup")
    )


def test_a_failing_node_fails_the_canvas_and_the_run(client: Fleet) -> None:
    wf = Workflow("canvas-boom", inputs=["t"])
    bad = wf.step("bad", "test.fail", message=wf.input("t"))
    wf.output("out", wf.step("after", "text.upper", text=bad["value"])["text"])
    canvas = client.to_canvas(wf, {"t": "kaput"})
    with pytest.raises(StepFailed, match=r"node 'bad'.*kaput"):
        canvas.apply_async().get(timeout=30)
    assert client.handle(canvas.tasks[0].kwargs["run"]["id"]).status() == "failed"  # type: ignore[attr-defined]
