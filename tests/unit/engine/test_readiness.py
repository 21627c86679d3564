"""The engine's decision, driven in-process: readiness, conditions, joins, loops, agents, maps."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fleet import Ref, Workflow
from fleet.config import FleetConfig
from fleet.constants import INPUTS
from fleet.engine.compiler import compile_workflow
from fleet.engine.readiness import decide
from fleet.errors import ReadinessError
from fleet.sdk.registry import registry
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.validate import validate

Waves = list[list[str]]


def run_inline(
    spec: WorkflowSpec, inputs: dict[str, Any], cfg: FleetConfig, order: random.Random | None = None
) -> tuple[dict[str, Any], Waves, list[str]]:
    """Run a workflow without a broker: (outputs, waves of ready paths, skipped paths).

    Without ``order`` every ready step runs at once (one wave each time); with it, one ready
    step at a time, picked at random -- any completion order must give the same outputs.
    """
    validate(spec, cfg, registry)
    compiled = compile_workflow(spec, cfg, registry)
    state: dict[str, Any] = {INPUTS: inputs}
    waves: Waves = []
    skipped: list[str] = []
    for _ in range(200):
        decision = decide(compiled, state)
        skipped += [p for p in decision.skipped if p not in skipped]
        if decision.finished:
            assert not decision.ready
            return decision.outputs, waves, skipped
        calls = decision.ready if order is None else [order.choice(decision.ready)]
        waves.append([c["path"] for c in calls])
        for call in calls:
            state[call["path"]] = registry.get(call["op"]).func(**call["args"])
    raise AssertionError("did not finish")


def test_sequence_runs_step_by_step(cfg: FleetConfig) -> None:
    wf = Workflow("seq", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    wf.output("out", b["text"])
    out, waves, _ = run_inline(wf.spec(), {"t": "  x  y "}, cfg)
    assert out == {"out": "X Y"}
    assert waves == [["a"], ["b"]]


def test_fan_out_fan_in(cfg: FleetConfig) -> None:
    wf = Workflow("par", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    c = wf.step("c", "text.stats", text=a["text"])
    d = wf.step("d", "text.template", template="${x}/${y}", x=b["text"], y=c["words"])
    wf.output("out", d["text"])
    out, waves, _ = run_inline(wf.spec(), {"t": "one two"}, cfg)
    assert out == {"out": "ONE TWO/2"}
    assert waves == [["a"], ["b", "c"], ["d"]]


def test_a_join_waits_for_every_branch(cfg: FleetConfig) -> None:
    wf = Workflow("join", inputs=["t"])
    b = wf.step("b", "text.upper", text=wf.input("t"))
    c = wf.step("c", "text.stats", text=wf.input("t"))
    wf.step("d", "text.template", template="${x}/${y}", x=b["text"], y=c["words"])
    compiled = compile_workflow(wf.spec(), cfg, registry)
    state: dict[str, Any] = {INPUTS: {"t": "x"}, "b": {"text": "X"}}
    assert [c["path"] for c in decide(compiled, state).ready] == ["c"]  # d waits for c
    state["c"] = {"words": 1, "chars": 1}
    (call,) = decide(compiled, state).ready
    assert call["path"] == "d" and call["args"] == {"x": "X", "y": 1, "template": "${x}/${y}"}


def test_condition_on_input_is_decided_at_once(cfg: FleetConfig) -> None:
    wf = Workflow("cond", inputs=["t", "loud"])
    up = wf.step("up", "text.upper", text=wf.input("t"), when=wf.input("loud").truthy())
    wf.output("out", up["text"] | wf.input("t"))
    out, waves, skipped = run_inline(wf.spec(), {"t": "hi", "loud": False}, cfg)
    assert out == {"out": "hi"} and skipped == ["up"] and waves == []
    out, waves, skipped = run_inline(wf.spec(), {"t": "hi", "loud": True}, cfg)
    assert out == {"out": "HI"} and skipped == [] and waves == [["up"]]


def _branching() -> Workflow:
    wf = Workflow("branch", inputs=["t"])
    found = wf.step("found", "text.contains", text=wf.input("t"), words=["refund"])
    yes = wf.step("yes", "text.upper", text=wf.input("t"), when=found["found"])
    no = wf.step("no", "text.normalize", text=wf.input("t"), when=found["found"].falsy())
    after = wf.step("after", "text.template", template="[${x}]", x=yes["text"] | no["text"])
    only_yes = wf.step("only_yes", "text.stats", text=yes["text"])
    wf.output("out", after["text"])
    wf.output("words", only_yes["words"] | Ref("found", "found"))
    return wf


def test_condition_on_step_output(cfg: FleetConfig) -> None:
    out, waves, skipped = run_inline(_branching().spec(), {"t": "a  refund"}, cfg)
    assert out == {"out": "[A  REFUND]", "words": 2}
    assert waves == [["found"], ["yes"], ["after", "only_yes"]]
    assert skipped == ["no"]
    out, _, skipped = run_inline(_branching().spec(), {"t": "a  thanks"}, cfg)
    # only_yes depends on a skipped node: it is skipped too, and the output falls back
    assert out == {"out": "[a thanks]", "words": False}
    assert skipped == ["yes", "only_yes"]


def _counter_body() -> tuple[Workflow, Ref]:
    body = Workflow("inc", inputs=["n"])
    add = body.step("add", "math.add", a=body.input("n"), b=1)
    body.output("n", add["result"])
    return body, add["result"]


@pytest.mark.parametrize(("limit", "until", "n", "iterations"), [(10, 3, 3, 3), (2, 5, 2, 2)])
def test_loop_until_or_bound(
    cfg: FleetConfig, limit: int, until: int, n: int, iterations: int
) -> None:
    body, result = _counter_body()
    wf = Workflow("loop", inputs=["start"])
    lp = wf.loop("count", body, max_iterations=limit, until=result >= until, n=wf.input("start"))
    wf.output("n", lp["n"])
    wf.output("iterations", lp["iterations"])
    out, waves, _ = run_inline(wf.spec(), {"start": 0}, cfg)
    assert out == {"n": n, "iterations": iterations}
    assert waves == [[f"count#{i}/add"] for i in range(1, iterations + 1)]


def test_agent_runs_once_and_nests(cfg: FleetConfig) -> None:
    body, result = _counter_body()
    inner = Workflow("inner", inputs=["n"])
    loop = inner.loop("again", body, max_iterations=5, until=result >= 4, n=inner.input("n"))
    inner.output("n", loop["n"])
    wf = Workflow("outer", inputs=["start"])
    agent = wf.agent("sub", inner, n=wf.input("start"))
    done = wf.step("done", "math.add", a=agent["n"], b=100)
    wf.output("n", done["result"])
    out, waves, _ = run_inline(wf.spec(), {"start": 1}, cfg)
    assert out == {"n": 104}
    assert waves[0] == ["sub#1/again#1/add"]
    assert waves[-1] == ["done"]


def _sleeper(name: str) -> Workflow:
    body = Workflow(name, inputs=["s"])
    nap = body.step("nap", "test.sleep", seconds=body.input("s"), value=name)
    body.output("value", nap["value"])
    return body


def test_sub_agents_of_one_level_run_side_by_side(cfg: FleetConfig) -> None:
    wf = Workflow("supervisor", inputs=["s"])
    a = wf.agent("alpha", _sleeper("alpha"), s=wf.input("s"))
    b = wf.agent("beta", _sleeper("beta"), s=wf.input("s"))
    plain = wf.step("plain", "test.sleep", seconds=wf.input("s"), value="plain")
    wf.output("a", a["value"])
    wf.output("b", b["value"])
    wf.output("plain", plain["value"])
    compiled = compile_workflow(wf.spec(), cfg, registry)
    ready = {c["path"] for c in decide(compiled, {INPUTS: {"s": 0}}).ready}
    assert ready == {"alpha#1/nap", "beta#1/nap", "plain"}


def test_react_loops_of_different_lengths_join(cfg: FleetConfig) -> None:
    body, result = _counter_body()
    wf = Workflow("supervisor", inputs=["start"])
    short = wf.loop("short", body, max_iterations=9, until=result >= 2, n=wf.input("start"))
    long = wf.loop("long", body, max_iterations=9, until=result >= 5, n=wf.input("start"))
    total = wf.step("total", "math.add", a=short["n"], b=long["n"])
    wf.output("total", total["result"])
    wf.output("rounds", short["iterations"])
    out, waves, _ = run_inline(wf.spec(), {"start": 0}, cfg)
    assert out == {"total": 7, "rounds": 2}
    assert waves[0] == ["short#1/add", "long#1/add"]  # both loops start at once
    assert waves[2] == ["long#3/add"]  # the short loop is done; the long one goes on alone
    assert waves[-1] == ["total"]


@pytest.mark.parametrize("seed", range(5))
def test_any_completion_order_gives_the_same_outputs(cfg: FleetConfig, seed: int) -> None:
    body, result = _counter_body()
    wf = Workflow("mixed", inputs=["t", "start"])
    loop = wf.loop("count", body, max_iterations=4, until=result >= 3, n=wf.input("start"))
    ups = wf.step("ups", "text.upper", text=wf.input("t"), map="text")
    joined = wf.step("joined", "text.join", parts=ups["text"], sep="+")
    wf.output("n", loop["n"])
    wf.output("joined", joined["text"])
    inputs = {"t": ["a", "b", "c"], "start": 0}
    expected, _, _ = run_inline(wf.spec(), inputs, cfg)
    got, _, _ = run_inline(wf.spec(), inputs, cfg, order=random.Random(seed))
    assert got == expected == {"n": 3, "joined": "A+B+C"}


def test_map_runs_once_per_item_then_collects(cfg: FleetConfig) -> None:
    wf = Workflow("map", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text")
    stats = wf.step("stats", "text.stats", text=ups["text"], map="text")
    joined = wf.step("joined", "text.join", parts=ups["text"], sep="+")
    wf.output("joined", joined["text"])
    wf.output("words", stats["words"])
    out, waves, _ = run_inline(wf.spec(), {"texts": ["a b", "c", "d e f"]}, cfg)
    assert out == {"joined": "A B+C+D E F", "words": [2, 1, 3]}
    assert waves[0] == ["ups[0]", "ups[1]", "ups[2]"]
    assert sorted(waves[1]) == ["joined", "stats[0]", "stats[1]", "stats[2]"]


def test_map_over_empty_list_and_non_list(cfg: FleetConfig) -> None:
    wf = Workflow("map", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text")
    wf.output("out", ups["text"])
    assert run_inline(wf.spec(), {"texts": []}, cfg)[0] == {"out": []}
    with pytest.raises(ReadinessError, match="node 'ups': map input 'text' is str, not a list"):
        run_inline(wf.spec(), {"texts": "abc"}, cfg)


def test_remaining_counts_the_longest_chain_to_the_end(cfg: FleetConfig) -> None:
    wf = Workflow("chain", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    wf.step("c", "text.stats", text=b["text"])
    wf.step("side", "text.stats", text=wf.input("t"))
    compiled = compile_workflow(wf.spec(), cfg, registry)
    ready = {c["path"]: c["remaining"] for c in decide(compiled, {INPUTS: {"t": "x"}}).ready}
    assert ready == {"a": 3, "side": 1}


def test_a_map_wider_than_the_limit_fails_naming_the_node(cfg: FleetConfig) -> None:
    wf = Workflow("wide", inputs=["texts"])
    wf.output("out", wf.step("ups", "text.upper", text=wf.input("texts"), map="text")["text"])
    narrow = cfg.model_copy(update={"max_map_items": 3})
    compiled = compile_workflow(wf.spec(), narrow, registry)
    assert len(decide(compiled, {INPUTS: {"texts": ["a", "b", "c"]}}).ready) == 3
    with pytest.raises(ReadinessError, match=r"node 'ups': map input 'text' has 4 items \(limit 3"):
        decide(compiled, {INPUTS: {"texts": ["a", "b", "c", "d"]}})
