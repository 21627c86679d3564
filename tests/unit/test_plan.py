"""The planner, driven in-process: segments, conditions, joins, loops, agents."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.builder import Ref, Workflow
from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.model import WorkflowSpec
from fleet.ops import registry
from fleet.plan import Frame, advance, lookup, merge_envelopes, new_envelope
from fleet.validate import validate


def run_inline(
    spec: WorkflowSpec, inputs: dict[str, Any], cfg: FleetConfig
) -> tuple[dict[str, Any], list[list[list[str]]], list[str]]:
    """Run a workflow without a broker: (outputs, segments as node paths, skipped paths)."""
    validate(spec, cfg, registry)
    env = new_envelope(inputs)
    frames: list[Frame] = []
    segments = []
    for _ in range(100):
        plan = advance(spec, frames, env, cfg, registry)
        if plan.finished:
            return plan.outputs, segments, plan.envelope["skipped"]
        segments.append([[c["path"] for c in level] for level in plan.levels])
        env, frames = plan.envelope, plan.frames
        for level in plan.levels:
            for call in level:
                kwargs = {n: lookup(env, alts)[1] for n, alts in call["inputs"].items()}
                out = registry.get(call["op"]).func(**kwargs, **call["params"])
                env["outputs"][call["path"]] = out
    raise AssertionError("did not finish")


def test_sequence_is_one_segment_of_single_levels(cfg: FleetConfig) -> None:
    wf = Workflow("seq", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    wf.output("out", b["text"])
    out, segments, _ = run_inline(wf.spec(), {"t": "  x  y "}, cfg)
    assert out == {"out": "X Y"}
    assert segments == [[["a"], ["b"]]]


def test_fan_out_fan_in_levels(cfg: FleetConfig) -> None:
    wf = Workflow("par", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    c = wf.step("c", "text.stats", text=a["text"])
    d = wf.step("d", "text.template", template="${x}/${y}", x=b["text"], y=c["words"])
    wf.output("out", d["text"])
    out, segments, _ = run_inline(wf.spec(), {"t": "one two"}, cfg)
    assert out == {"out": "ONE TWO/2"}
    assert segments == [[["a"], ["b", "c"], ["d"]]]


def test_condition_on_input_is_decided_at_once(cfg: FleetConfig) -> None:
    wf = Workflow("cond", inputs=["t", "loud"])
    up = wf.step("up", "text.upper", text=wf.input("t"), when=wf.input("loud").truthy())
    wf.output("out", up["text"] | wf.input("t"))
    out, segments, skipped = run_inline(wf.spec(), {"t": "hi", "loud": False}, cfg)
    assert out == {"out": "hi"} and skipped == ["up"] and segments == []
    out, segments, skipped = run_inline(wf.spec(), {"t": "hi", "loud": True}, cfg)
    assert out == {"out": "HI"} and skipped == [] and segments == [[["up"]]]


def test_condition_on_step_output_waits_for_next_segment(cfg: FleetConfig) -> None:
    wf = Workflow("branch", inputs=["t"])
    found = wf.step("found", "text.contains", text=wf.input("t"), words=["refund"])
    yes = wf.step("yes", "text.upper", text=wf.input("t"), when=found["found"])
    no = wf.step("no", "text.normalize", text=wf.input("t"), when=found["found"].falsy())
    after = wf.step("after", "text.template", template="[${x}]", x=yes["text"] | no["text"])
    only_yes = wf.step("only_yes", "text.stats", text=yes["text"])
    wf.output("out", after["text"])
    wf.output("words", only_yes["words"] | Ref("found", "found"))
    out, segments, skipped = run_inline(wf.spec(), {"t": "a  refund"}, cfg)
    assert out == {"out": "[A  REFUND]", "words": 2}
    assert segments == [[["found"]], [["yes"], ["after", "only_yes"]]]
    assert skipped == ["no"]
    out, _, skipped = run_inline(wf.spec(), {"t": "a  thanks"}, cfg)
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
    out, segments, _ = run_inline(wf.spec(), {"start": 0}, cfg)
    assert out == {"n": n, "iterations": iterations}
    assert [s[0][0] for s in segments] == [f"count#{i}/add" for i in range(1, iterations + 1)]


def test_agent_runs_once_and_nests(cfg: FleetConfig) -> None:
    body, result = _counter_body()
    inner = Workflow("inner", inputs=["n"])
    loop = inner.loop("again", body, max_iterations=5, until=result >= 4, n=inner.input("n"))
    inner.output("n", loop["n"])
    wf = Workflow("outer", inputs=["start"])
    agent = wf.agent("sub", inner, n=wf.input("start"))
    done = wf.step("done", "math.add", a=agent["n"], b=100)
    wf.output("n", done["result"])
    out, segments, _ = run_inline(wf.spec(), {"start": 1}, cfg)
    assert out == {"n": 104}
    assert segments[0] == [["sub#1/again#1/add"]]
    assert segments[-1] == [["done"]]


def test_merge_envelopes_unions_branches() -> None:
    a = new_envelope({"x": 1})
    b = new_envelope({"x": 1})
    a["outputs"]["p"] = {"v": 1}
    b["outputs"]["q"] = {"v": 2}
    b["skipped"].append("r")
    merged = merge_envelopes([a, b])
    assert set(merged["outputs"]) == {"inputs", "p", "q"} and merged["skipped"] == ["r"]


def test_map_runs_once_per_item_then_collects(cfg: FleetConfig) -> None:
    wf = Workflow("map", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text")
    stats = wf.step("stats", "text.stats", text=ups["text"], map="text")
    joined = wf.step("joined", "text.join", parts=ups["text"], sep="+")
    wf.output("joined", joined["text"])
    wf.output("words", stats["words"])
    out, segments, _ = run_inline(wf.spec(), {"texts": ["a b", "c", "d e f"]}, cfg)
    assert out == {"joined": "A B+C+D E F", "words": [2, 1, 3]}
    assert segments[0] == [["ups[0]", "ups[1]", "ups[2]"]]
    assert sorted(segments[1][0]) == ["joined", "stats[0]", "stats[1]", "stats[2]"]


def test_map_over_empty_list_and_non_list(cfg: FleetConfig) -> None:
    wf = Workflow("map", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text")
    wf.output("out", ups["text"])
    assert run_inline(wf.spec(), {"texts": []}, cfg)[0] == {"out": []}
    with pytest.raises(FleetError, match="map input 'text' is str, not a list"):
        run_inline(wf.spec(), {"texts": "abc"}, cfg)
