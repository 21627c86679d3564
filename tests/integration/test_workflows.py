"""Workflows on real workers: results, and from the trace, that every step ran on a worker of
the class it was routed to."""

from __future__ import annotations

import time

import pytest

from fleet import Ref, Workflow
from fleet.client.client import Fleet
from fleet.errors import WorkflowFailed, WorkflowValidationError
from fleet.sdk.devices import cuda_available
from fleet.store.records import TraceEntry
from workers.tasks import CPU_FALLBACK

pytestmark = pytest.mark.integration


def _by_node(trace: list[TraceEntry]) -> dict[str, TraceEntry]:
    return {e.node: e for e in trace if e.status == "succeeded"}


def _assert_ran_where_routed(trace: list[TraceEntry]) -> None:
    for e in trace:
        if e.status != "succeeded":
            continue
        assert e.route, f"{e.node} has no routing decision"
        assert e.cls == e.route["cls"], f"{e.node}: routed to {e.route['cls']}, ran on {e.cls}"
        assert e.worker is not None and e.worker.startswith(f"{e.cls}@"), (e.node, e.worker)
        assert e.queue == e.cls
        assert e.wait_s is not None and e.wait_s >= 0 and e.run_s >= 0


def test_sequence(client: Fleet) -> None:
    wf = Workflow("seq", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"], prefer="gpu")
    c = wf.step("c", "test.sleep", seconds=0.01, value=b["text"])
    wf.output("out", c["value"])
    run = client.submit(wf, {"t": "  hello   fleet "})
    assert run.get(timeout=30) == {"out": "HELLO FLEET"}
    assert run.status() == "succeeded"
    trace = run.trace()
    steps = _by_node(trace)
    assert [steps[n].cls for n in "abc"] == ["cpu", "gpu", "io"]
    _assert_ran_where_routed(trace)
    assert steps["a"].ended_at <= steps["b"].started_at <= steps["c"].started_at
    # gpu binds to a GPU: on a host with none usable, its step says where it really ran
    assert steps["b"].device == (None if cuda_available() else CPU_FALLBACK)
    assert steps["a"].device is None and steps["c"].device is None


def test_parallel_join_runs_branches_concurrently(client: Fleet) -> None:
    wf = Workflow("par", inputs=["t"])
    a = wf.step("a", "test.sleep", seconds=2.0, value=wf.input("t"), classes=["io"])
    b = wf.step("b", "test.sleep", seconds=2.0, value=wf.input("t"), classes=["cpu"])
    c = wf.step("c", "test.sleep", seconds=2.0, value=wf.input("t"), classes=["npu-lite"])
    j = wf.step(
        "j", "text.template", template="${x}${y}${z}", x=a["value"], y=b["value"], z=c["value"]
    )
    wf.output("out", j["text"])
    run = client.submit(wf, {"t": "x"})
    assert run.get(timeout=30) == {"out": "xxx"}
    steps = _by_node(run.trace())
    assert {steps[n].cls for n in "abc"} == {"io", "cpu", "npu-lite"}
    # the three sleeps overlapped: each started before any had ended (a mechanism, not a
    # wall-clock bound: one after another, the last would start after the first ended)
    assert max(steps[n].started_at for n in "abc") < min(steps[n].ended_at for n in "abc")
    assert steps["j"].started_at >= max(steps[n].ended_at for n in "abc")
    _assert_ran_where_routed(run.trace())


def test_conditional_branch(client: Fleet) -> None:
    wf = Workflow("cond", inputs=["t"])
    u = wf.step("urgent", "text.contains", text=wf.input("t"), words=["refund"])
    yes = wf.step("escalate", "text.upper", text=wf.input("t"), when=u["found"], prefer="gpu")
    no = wf.step("routine", "text.normalize", text=wf.input("t"), when=u["found"].falsy())
    wf.output("out", yes["text"] | no["text"])
    run = client.submit(wf, {"t": "a refund  please"})
    assert run.get(timeout=30) == {"out": "A REFUND  PLEASE"}
    trace = run.trace()
    assert {e.node: e.status for e in trace} == {
        "urgent": "succeeded",
        "routine": "skipped",
        "escalate": "succeeded",
    }
    assert _by_node(trace)["escalate"].cls == "gpu"
    run = client.submit(wf, {"t": "thanks  a lot"})
    assert run.get(timeout=30) == {"out": "thanks a lot"}
    assert "escalate" not in _by_node(run.trace())


def test_bounded_loop(client: Fleet) -> None:
    body = Workflow("tool-round", inputs=["n"])
    add = body.step("call_tool", "math.add", a=body.input("n"), b=1)
    wait = body.step("io_wait", "test.sleep", seconds=0.01, value=add["result"])
    body.output("n", wait["value"])
    wf = Workflow("loop", inputs=["start"])
    lp = wf.loop("rounds", body, max_iterations=5, until=add["result"] >= 3, n=wf.input("start"))
    wf.output("n", lp["n"])
    wf.output("rounds", lp["iterations"])
    run = client.submit(wf, {"start": 0})
    assert run.get(timeout=30) == {"n": 3, "rounds": 3}
    steps = _by_node(run.trace())
    assert [k for k in steps if k.endswith("/call_tool")] == [
        f"rounds#{i}/call_tool" for i in (1, 2, 3)
    ]
    assert all(steps[f"rounds#{i}/io_wait"].cls == "io" for i in (1, 2, 3))
    # the bound holds even when the condition never does
    run = client.submit(wf.spec().model_copy(update={"name": "loop2"}), {"start": -100})
    assert run.get(timeout=30)["rounds"] == 5


def test_failing_step_fails_its_workflow_and_not_its_neighbour(client: Fleet) -> None:
    bad = Workflow("bad", inputs=["t"])
    a = bad.step("prepare", "text.upper", text=bad.input("t"))
    f = bad.step("explode", "test.fail", message="kaboom", value=a["text"])
    bad.step("never", "text.upper", text=f["value"])
    slow = Workflow("slow", inputs=["t"])
    s = slow.step("wait", "test.sleep", seconds=0.5, value=slow.input("t"))
    slow.output("out", s["value"])
    good_run = client.submit(slow, {"t": "ok"})
    bad_run = client.submit(bad, {"t": "x"})
    with pytest.raises(WorkflowFailed) as info:
        bad_run.get(timeout=30)
    assert info.value.node == "explode"
    assert "node 'explode' (op test.fail): InjectedFailure: kaboom" in str(info.value)
    assert bad_run.status() == "failed"
    assert "never" not in {e.node for e in bad_run.trace()}
    assert good_run.get(timeout=30) == {"out": "ok"}


def test_routing_falls_back_from_a_class_without_workers(client: Fleet) -> None:
    wf = Workflow("fallback", inputs=["v"])
    e = wf.step("echo", "test.echo", value=wf.input("v"), prefer="tpu")
    wf.output("v", e["value"])
    run = client.submit(wf, {"v": [1, 2]})
    assert run.get(timeout=30) == {"v": [1, 2]}
    (entry,) = run.trace()
    assert entry.cls != "tpu" and entry.route["cls"] == entry.cls
    assert "no live worker for preferred 'tpu'" in entry.route["reason"]


def test_retries_then_fails_with_node_named(client: Fleet) -> None:
    wf = Workflow("retry", inputs=[])
    wf.step("flaky", "test.fail", message="still down", retries=2)
    run = client.submit(wf)
    with pytest.raises(WorkflowFailed, match="node 'flaky'"):
        run.get(timeout=30)
    statuses = [e.status for e in run.trace()]
    assert statuses == ["retrying", "retrying", "failed"]
    assert [e.attempt for e in run.trace()] == [0, 1, 2]


def test_invalid_workflow_is_rejected_before_anything_is_sent(client: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    before = {k for k in broker.keys("fleet:run:*")}
    wf = Workflow("broken", inputs=["t"])
    wf.step("a", "text.upper", text=Ref("ghost", "text"))
    with pytest.raises(WorkflowValidationError, match="unknown node 'ghost'"):
        client.submit(wf, {"t": "x"})
    with pytest.raises(WorkflowValidationError, match="missing workflow input 't'"):
        ok = Workflow("ok", inputs=["t"])
        ok.step("a", "text.upper", text=ok.input("t"))
        client.submit(ok, {})
    assert {k for k in broker.keys("fleet:run:*")} == before


def test_many_runs_in_parallel(client: Fleet) -> None:
    wf = Workflow("many", inputs=["i"])
    a = wf.step("a", "math.add", a=wf.input("i"), b=1)
    b = wf.step("b", "test.sleep", seconds=0.05, value=a["result"])
    wf.output("out", b["value"])
    start = time.monotonic()
    runs = [client.submit(wf, {"i": i}) for i in range(20)]
    assert [r.get(timeout=60)["out"] for r in runs] == [i + 1 for i in range(20)]
    assert time.monotonic() - start < 30


def test_many_runs_submitted_together(client: Fleet, broker) -> None:  # type: ignore[no-untyped-def]
    """submit_many: every run ends with its own outputs, handles in the order of the inputs;
    a branching workflow sends each run's first steps; a wrong inputs dict is named by its
    position and nothing at all is sent."""
    wf = Workflow("together", inputs=["i"])
    a = wf.step("a", "math.add", a=wf.input("i"), b=1)
    b = wf.step("b", "math.add", a=wf.input("i"), b=2)  # two first steps a run
    wf.output("a", a["result"])
    wf.output("b", b["result"])
    runs = client.submit_many(wf, [{"i": i} for i in range(30)])
    assert [r.get(timeout=60) for r in runs] == [{"a": i + 1, "b": i + 2} for i in range(30)]
    assert len({r.id for r in runs}) == 30
    before = {k for k in broker.keys("fleet:run:*")}
    with pytest.raises(
        WorkflowValidationError, match=r"(?s)inputs\[2\]: .*missing workflow input 'i'"
    ):
        client.submit_many(wf, [{"i": 1}, {"i": 2}, {}, {"i": 4}])
    assert {k for k in broker.keys("fleet:run:*")} == before
    assert client.submit_many(wf, []) == []


def _napper(name: str, seconds: float, cls: str = "io") -> Workflow:
    body = Workflow(name, inputs=["v"])
    nap = body.step("nap", "test.sleep", seconds=seconds, value=body.input("v"), classes=[cls])
    body.output("v", nap["value"])
    return body


def test_sub_agents_run_side_by_side(client: Fleet) -> None:
    wf = Workflow("supervisor", inputs=["v"])
    a = wf.agent("alpha", _napper("alpha", 2.0), v=wf.input("v"))
    b = wf.agent("beta", _napper("beta", 2.0), v=wf.input("v"))
    j = wf.step("join", "text.template", template="${x}${y}", x=a["v"], y=b["v"])
    wf.output("out", j["text"])
    run = client.submit(wf, {"v": "z"})
    assert run.get(timeout=30) == {"out": "zz"}
    naps = [e for e in run.trace() if e.node.endswith("/nap")]
    assert len(naps) == 2
    # side by side: each sub-agent's 2-s nap started before the other's ended (one after
    # the other, the second would start only once the first had ended)
    assert max(n.started_at for n in naps) < min(n.ended_at for n in naps)


def test_supervisor_joins_react_loops_of_different_lengths(client: Fleet) -> None:
    body = Workflow("round", inputs=["n"])
    add = body.step("add", "math.add", a=body.input("n"), b=1)
    body.step("think", "test.sleep", seconds=0.05, value=add["result"], classes=["io"])
    body.output("n", add["result"])
    wf = Workflow("supervisor", inputs=["n"])
    short = wf.loop("short", body, max_iterations=9, until=add["result"] >= 2, n=wf.input("n"))
    long = wf.loop("long", body, max_iterations=9, until=add["result"] >= 5, n=wf.input("n"))
    total = wf.step("total", "math.add", a=short["n"], b=long["n"])
    wf.output("total", total["result"])
    wf.output("rounds", short["iterations"])
    wf.output("long_rounds", long["iterations"])
    run = client.submit(wf, {"n": 0})
    assert run.get(timeout=30) == {"total": 7, "rounds": 2, "long_rounds": 5}
    steps = _by_node(run.trace())
    assert {"short#2/add", "long#5/think"} <= set(steps) and "short#3/add" not in steps
    # the loops overlapped: the long one's first round began before the short one ended
    assert steps["long#1/add"].started_at < steps["short#2/think"].ended_at
    assert steps["total"].started_at >= steps["long#5/think"].ended_at


def test_a_deadline_holds_on_the_thread_pool(client: Fleet) -> None:
    wf = Workflow("slow-io", inputs=["v"])
    nap = wf.step("nap", "test.sleep", seconds=6, value=wf.input("v"), classes=["io"], timeout=1)
    wf.output("out", nap["value"])
    start = time.monotonic()
    run = client.submit(wf, {"v": "x"})
    quick = Workflow("quick", inputs=["t"])
    up = quick.step("up", "text.upper", text=quick.input("t"), classes=["io"])
    quick.output("out", up["text"])
    assert client.submit(quick, {"t": "y"}).get(timeout=10) == {"out": "Y"}
    with pytest.raises(WorkflowFailed, match="deadline of 1 s") as failed:
        run.get(timeout=30)
    assert failed.value.node == "nap" and time.monotonic() - start < 4


def test_ops_on_a_thread_pool_know_their_step(client: Fleet) -> None:
    """On io (threads) the op runs in a helper thread under its deadline: the current step
    (fleet.sdk.current_step) goes with it, so a tool's idempotency key is there too."""
    wf = Workflow("ctx-io", inputs=["v"])
    here = wf.step("here", "test.step", value=wf.input("v"), classes=["io"], timeout=30)
    wf.output("key", here["key"])
    wf.output("deadline", here["has_deadline"])
    run = client.submit(wf, {"v": 1})
    assert run.get(timeout=60) == {"key": f"{run.id}:here", "deadline": True}
    assert [e.cls for e in run.trace()] == ["io"]


def test_a_worker_refuses_sensitive_work_its_own_config_does_not_trust(
    local_fleet: object,
) -> None:
    """A client whose configuration trusts io with confidential data can place such a step
    there; the io worker's own configuration (tests/fleet-test.toml: no class is trusted)
    refuses it, naming the node and the rule, instead of running it."""
    from fleet.messaging.app import create_app

    base = Fleet().cfg
    classes = {
        name: spec.model_copy(update={"trusted_for": ["confidential"] if name == "io" else []})
        for name, spec in base.classes.items()
    }
    lenient = base.model_copy(update={"classes": classes})
    client = Fleet(app=create_app(lenient), cfg=lenient)
    wf = Workflow("secret", inputs=["t"])
    wf.output("out", wf.step("shout", "text.upper", text=wf.input("t"), classes=["io"])["text"])
    spec = wf.spec()
    spec.sensitivity = "confidential"
    run = client.submit(spec, {"t": "patient record"})
    with pytest.raises(WorkflowFailed, match=r"does not trust class 'io' with it"):
        run.get(timeout=60)
    assert [(e.node, e.cls, e.status) for e in run.trace()] == [("shout", "io", "failed")]
