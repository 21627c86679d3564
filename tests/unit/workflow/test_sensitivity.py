"""Placement constraints: work marked with a sensitivity runs only on classes trusted for it --
validation refuses a workflow that could not, and routing has no other class to fall back to."""

from __future__ import annotations

import pytest

from fleet.config import FleetConfig
from fleet.constants import INPUTS
from fleet.engine.compiler import compile_workflow
from fleet.errors import WorkflowValidationError
from fleet.routing.estimate import RouteRequest
from fleet.routing.policies import make_policy
from fleet.routing.profiles import ProfileStore
from fleet.routing.state import FleetState, WorkerInfo
from fleet.sdk.registry import registry
from fleet.workflow.loader import spec_from_data
from fleet.workflow.validate import validate


@pytest.fixture()
def trusted(cfg: FleetConfig) -> FleetConfig:
    classes = {
        name: spec.model_copy(update={"trusted_for": ["confidential"] if name == "gpu" else []})
        for name, spec in cfg.classes.items()
    }
    return cfg.model_copy(update={"classes": classes})


def _spec(sensitivity: str | None, op: str = "text.upper") -> dict:  # type: ignore[type-arg]
    inner = {
        "name": "inner",
        "inputs": ["t"],
        "nodes": [{"name": "shout", "op": op, "inputs": {"text": "inputs.t"}}],
        "outputs": {"t": "shout.text"},
    }
    data = {
        "name": "medical",
        "inputs": ["t"],
        "nodes": [
            {"name": "clean", "op": "text.normalize", "inputs": {"text": "inputs.t"}},
            {"name": "agent", "workflow": inner, "inputs": {"t": "clean.text"}},
        ],
        "outputs": {"t": "agent.t"},
    }
    if sensitivity:
        data["sensitivity"] = sensitivity
    return data


def test_marked_work_may_run_only_on_trusted_classes(trusted: FleetConfig) -> None:
    spec = spec_from_data(_spec("confidential"))
    validate(spec, trusted, registry)
    compiled = compile_workflow(spec, trusted, registry)
    assert compiled.root.classes["clean"] == ["gpu"]
    assert compiled.root.children["agent"].classes["shout"] == ["gpu"]  # inherited
    open_spec = spec_from_data(_spec(None))
    assert len(compile_workflow(open_spec, trusted, registry).root.classes["clean"]) > 1


def test_validation_names_the_node_and_the_constraint(trusted: FleetConfig) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        validate(spec_from_data(_spec("secret")), trusted, registry)
    text = str(info.value)
    assert "node 'clean'" in text and "sensitivity 'secret'" in text and "trusted: none" in text
    assert "agent/shout" in text


def test_routing_never_falls_back_across_the_constraint(trusted: FleetConfig) -> None:
    spec = spec_from_data(_spec("confidential"))
    classes = compile_workflow(spec, trusted, registry).root.classes["clean"]
    # the trusted class has no live worker; an untrusted one is idle
    cpu = WorkerInfo("cpu@h", ("cpu",), 2, "prefork", 1, 0.0)
    state = FleetState(workers={"cpu": [cpu], "gpu": []}, depth={"cpu": 0, "gpu": 0})
    failing = trusted.model_copy(update={"no_worker": "fail"})
    for name in ("static", "preferred", "least-latency", "cost-sla"):
        req = RouteRequest("fleet.step", "text.normalize", "compute", tuple(classes))
        decision = make_policy(name).choose(req, state, failing, ProfileStore())
        assert decision.cls == "gpu", name  # never cpu: it is not a candidate at all
        assert decision.fail or name == "static", name  # the live-aware ones fail the run


def test_a_preferred_class_kept_out_by_trust_names_the_rule(trusted: FleetConfig) -> None:
    """io can run text.upper; it is the trust rule that keeps it out, and the error says so."""
    data = {
        "name": "medical",
        "sensitivity": "confidential",
        "inputs": ["t"],
        "nodes": [
            {"name": "shout", "op": "text.upper", "prefer": "io", "inputs": {"text": "inputs.t"}}
        ],
        "outputs": {"t": "shout.text"},
    }
    with pytest.raises(WorkflowValidationError) as err:
        validate(spec_from_data(data), trusted, registry)
    assert "preferred class 'io' is not trusted for sensitivity 'confidential'" in str(err.value)
    assert "cannot run op" not in str(err.value)


def test_the_routing_reason_names_the_rule_that_narrowed_the_classes(
    trusted: FleetConfig,
) -> None:
    """`fleet trace --why` said why a class won among the candidates, never why the others
    were not candidates: the trust rule and the node's own classes are named."""
    from fleet.engine.readiness import decide
    from fleet.routing.router import FleetRouter, take_decision
    from fleet.routing.state import CachedState
    from tests.support.states import FixedReader
    from tests.unit.routing.test_routing import _state

    data = _spec("confidential")
    data["nodes"][0]["classes"] = ["gpu"]  # the node's list leaves nothing more out here
    compiled = compile_workflow(spec_from_data(data), trusted, registry)
    (call,) = decide(compiled, {INPUTS: {"t": "x"}}).ready
    assert call["rule"].startswith("sensitivity 'confidential' rules out ")
    assert "npu-lite" in call["rule"] and "gpu" not in call["rule"].split("rules out")[1]
    router = FleetRouter(trusted, CachedState(FixedReader(trusted, _state("gpu")), ttl=60))
    router("fleet.step", (), {"call": call}, {})
    decision = take_decision("fleet.step")
    assert decision is not None and decision.reason.endswith(call["rule"])

    open_data = _spec(None)
    open_data["nodes"][0]["classes"] = ["cpu", "io"]
    compiled = compile_workflow(spec_from_data(open_data), trusted, registry)
    (call,) = decide(compiled, {INPUTS: {"t": "x"}}).ready
    assert call["rule"].startswith("the node's classes (cpu, io) leave out ")
