from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet import Ref, Workflow
from fleet.config import FleetConfig, load_config
from fleet.errors import WorkflowValidationError
from fleet.sdk.registry import registry
from fleet.workflow.loader import load_workflow
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.validate import check_inputs, problems, validate


def _messages(spec: WorkflowSpec, cfg: FleetConfig) -> list[str]:
    return [str(p) for p in problems(spec, cfg, registry)]


def _one(spec: WorkflowSpec, cfg: FleetConfig) -> str:
    found = _messages(spec, cfg)
    assert len(found) == 1, found
    return found[0]


def test_valid_workflow_passes(cfg: FleetConfig) -> None:
    wf = Workflow("ok", inputs=["text"])
    c = wf.step("clean", "text.normalize", text=wf.input("text"))
    wf.output("t", c["text"])
    validate(wf.spec(), cfg, registry)


def test_unknown_op(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "text.nope", text="x")
    assert _one(wf.spec(), cfg) == "node 'a': field 'op': unknown op 'text.nope'"


def test_missing_required_input(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "text.upper")
    assert "op text.upper needs 'text'" in _one(wf.spec(), cfg)


def test_unexpected_param(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "text.upper", text="x", colour="red")
    assert "takes no 'colour'" in _one(wf.spec(), cfg)


def test_dangling_references(cfg: FleetConfig) -> None:
    wf = Workflow("w", inputs=["text"])
    a = wf.step("a", "text.upper", text=wf.input("text"))
    spec = wf.spec()
    spec.nodes.append(spec.nodes[0].model_copy(update={"name": "b", "inputs": {"text": "zz.text"}}))
    spec.nodes.append(spec.nodes[0].model_copy(update={"name": "c", "inputs": {"text": "a.txt"}}))
    spec.nodes.append(
        spec.nodes[0].model_copy(update={"name": "d", "inputs": {"text": "inputs.nope"}})
    )
    spec.outputs["x"] = str(a["missing"])
    found = _messages(spec, cfg)
    assert "node 'b': field 'inputs.text': 'zz.text' refers to unknown node 'zz'" in found
    assert any("node 'c'" in m and "has no output 'txt' (has: text)" in m for m in found)
    assert any("node 'd'" in m and "has no input 'nope'" in m for m in found)
    assert any("outputs.x" in m and "no output 'missing'" in m for m in found)


def test_unbounded_cycle(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "text.upper", text=Ref("b", "text"))
    wf.step("b", "text.upper", text=Ref("a", "text"))
    msg = _one(wf.spec(), cfg)
    assert re.search(r"unbounded cycle (a -> b -> a|b -> a -> b)", msg) and "max_iterations" in msg


def test_duplicate_names_and_reserved(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "test.echo", value=1)
    wf.step("a", "test.echo", value=2)
    wf.step("inputs", "test.echo", value=3)
    found = _messages(wf.spec(), cfg)
    assert any("node 'a'" in m and "duplicate node name" in m for m in found)
    assert any("'inputs' is reserved" in m for m in found)


def test_op_no_configured_class_can_run() -> None:
    only_gpu = load_config(env={"FLEET_CONTROL_CLASS": "gpu"})
    only_gpu.classes = {"gpu": only_gpu.classes["gpu"]}
    wf = Workflow("w")
    wf.step("slow", "test.sleep", seconds=1, classes=["io"])
    wf.step("hinted", "test.sleep", seconds=1, prefer="io")  # a hint for an absent class: ignored
    found = [str(p) for p in problems(wf.spec(), only_gpu, registry)]
    assert any("node 'slow'" in m and "class 'io' is not configured" in m for m in found)
    assert any("no configured class can run op test.sleep" in m for m in found)
    assert not any("hinted" in m for m in found)


def test_prefer_must_be_eligible(cfg: FleetConfig) -> None:
    wf = Workflow("w")
    wf.step("a", "test.sleep", seconds=0, classes=["io"], prefer="cpu")
    # cpu can run test.sleep: the node's own classes are the rule that keeps it out
    assert "preferred class 'cpu' is not among the node's classes (io)" in _one(wf.spec(), cfg)
    wf = Workflow("w")
    wf.step("a", "embed.texts", texts=["x"], prefer="io")
    assert "preferred class 'io' cannot run op embed.texts" in _one(wf.spec(), cfg)


def test_subflow_inputs_and_until(cfg: FleetConfig) -> None:
    body = Workflow("b", inputs=["n"])
    add = body.step("add", "math.add", a=body.input("n"), b=1)
    body.output("n", add["result"])
    wf = Workflow("w", inputs=["n"])
    wf.loop("l", body, max_iterations=3, until=Ref("zz", "result") > 2)  # and n not given
    found = _messages(wf.spec(), cfg)
    assert any("sub-workflow input 'n' is not provided" in m for m in found)
    assert any("loop.until" in m and "unknown node 'zz'" in m for m in found)


def test_errors_inside_subflow_name_the_path(cfg: FleetConfig) -> None:
    body = Workflow("b", inputs=["n"])
    body.step("bad", "no.such.op")
    wf = Workflow("w", inputs=["n"])
    wf.agent("outer", body, n=wf.input("n"))
    assert "node 'outer/bad'" in _one(wf.spec(), cfg)


def test_file_errors_carry_lines(cfg: FleetConfig, tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(
        "name: w\ninputs: [t]\nnodes:\n"
        "  - name: a\n    op: text.upper\n    inputs: {text: inputs.t}\n"
        "  - name: b\n    op: text.upperr\n    inputs: {text: a.text}\n"
    )
    with pytest.raises(WorkflowValidationError) as info:
        validate(load_workflow(f), cfg, registry)
    assert f"{f}:7: node 'b': field 'op': unknown op 'text.upperr'" in str(info.value)


def test_check_inputs() -> None:
    spec = WorkflowSpec(name="w", inputs=["a", "b"], defaults={"b": 1})
    check_inputs(spec, ["a"])
    with pytest.raises(WorkflowValidationError, match="missing workflow input 'a'"):
        check_inputs(spec, [])
    with pytest.raises(WorkflowValidationError, match="unknown workflow input 'c'"):
        check_inputs(spec, ["a", "c"])
