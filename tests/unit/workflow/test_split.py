"""`split:` on a node: a splittable op becomes its two parts, each pinned to its class."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.config import FleetConfig
from fleet.engine.compiler import compile_workflow
from fleet.errors import WorkflowValidationError
from fleet.sdk.registry import registry
from fleet.workflow.loader import spec_from_data
from fleet.workflow.split import expand_splits
from fleet.workflow.validate import problems


def _flow(**node: Any) -> dict[str, Any]:
    answer = {
        "name": "answer",
        "op": "llm.generate",
        "inputs": {"prompt": "inputs.q"},
        "params": {"max_tokens": 8, "n_ctx": 512, "stop": ["\n"]},
        "split": {"prefill": "gpu", "decode": "cpu"},
        **node,
    }
    return {
        "name": "qa",
        "inputs": ["q"],
        "nodes": [answer, {"name": "shout", "op": "text.upper", "inputs": {"text": "answer.text"}}],
        "outputs": {"text": "shout.text", "kv": "answer.prefill_state_bytes"},
    }


def test_a_split_node_becomes_prefill_then_decode_on_their_classes(cfg: FleetConfig) -> None:
    spec = spec_from_data(_flow())
    ran = expand_splits(spec, registry)
    assert spec.node("answer").op == "llm.generate"  # the original is left as it was
    node = ran.node("answer")
    assert node.op is None and node.workflow is not None and node.kind == "agent"
    prefill, decode = node.workflow.nodes
    assert (prefill.op, prefill.classes, prefill.inputs) == (
        "llm.prefill",
        ["gpu"],
        {"prompt": "inputs.prompt"},
    )
    assert prefill.params == {"n_ctx": 512}  # only what llm.prefill takes
    assert (decode.op, decode.classes) == ("llm.decode", ["cpu"])
    assert decode.inputs == {"state": "prefill.state"}
    assert decode.params == {"max_tokens": 8, "n_ctx": 512, "stop": ["\n"]}
    assert node.workflow.outputs["text"] == "decode.text"
    assert node.workflow.outputs["prefill_state_bytes"] == "prefill.state_bytes"
    assert not problems(spec, cfg, registry)  # downstream reads answer.text as before
    scope = compile_workflow(ran, cfg, registry).root
    assert scope.children["answer"].classes == {"prefill": ["gpu"], "decode": ["cpu"]}


def test_a_literal_prompt_goes_to_the_first_part(cfg: FleetConfig) -> None:
    flow = _flow(inputs={}, params={"prompt": "Hello", "max_tokens": 4})
    node = expand_splits(spec_from_data(flow), registry).node("answer")
    assert node.workflow is not None
    assert node.workflow.nodes[0].params == {"prompt": "Hello"}
    assert node.workflow.nodes[1].params == {"max_tokens": 4}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"op": "text.upper", "inputs": {"text": "inputs.q"}, "params": {}}, "does not split"),
        ({"split": {"prefill": "gpu", "decode": "tpu"}}, "class 'tpu' is not configured"),
        ({"split": {"prefill": "gpu", "decode": "io"}}, "no configured class can run"),
        ({"map": "prompt"}, "'split' and 'map' do not go together"),
    ],
)
def test_a_split_that_cannot_run_is_named(
    cfg: FleetConfig, change: dict[str, Any], message: str
) -> None:
    found = problems(spec_from_data(_flow(**change)), cfg, registry)
    assert any(message in p.message and (p.node or "").startswith("answer") for p in found), found


def test_a_split_needs_both_classes() -> None:
    with pytest.raises(WorkflowValidationError, match=r"split\.decode"):
        spec_from_data(_flow(split={"prefill": "gpu"}))


def test_a_plan_splits_the_nodes_it_names(cfg: FleetConfig) -> None:
    """A plan's `splits` ("workflow:node path") split a node that says nothing itself, also
    inside a sub-workflow; other workflows' nodes are left alone."""
    flow = _flow()
    del flow["nodes"][0]["split"]
    outer = {
        "name": "outer",
        "inputs": ["q"],
        "nodes": [{"name": "inner", "workflow": flow, "inputs": {"q": "inputs.q"}}],
        "outputs": {"text": "inner.text"},
    }
    planned = {"qa:answer": {"prefill": "gpu", "decode": "cpu"}}
    spec = spec_from_data(flow)
    assert expand_splits(spec, registry).node("answer").op == "llm.generate"  # no plan
    split = expand_splits(spec, registry, planned).node("answer")
    assert split.workflow is not None
    assert [n.classes for n in split.workflow.nodes] == [["gpu"], ["cpu"]]
    nested = spec_from_data(outer)
    inner = expand_splits(nested, registry, {"outer:inner/answer": planned["qa:answer"]})
    body = inner.node("inner").workflow
    assert body is not None and body.node("answer").workflow is not None
    assert expand_splits(nested, registry, planned) == nested  # "qa:..." is another workflow
    cfg_planned = cfg.model_copy(update={"splits": planned})
    assert not problems(spec, cfg_planned, registry)
