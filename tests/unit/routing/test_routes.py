"""Every policy follows a plan's placement (`routes`) while it holds, never outside the
eligible classes."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.config import FleetConfig
from fleet.routing.estimate import RouteRequest
from fleet.routing.policies import StaticPolicy, make_policy, route_key
from fleet.routing.profiles import ProfileStore
from fleet.routing.state import FleetState


def test_routes_place_nodes_by_workflow_and_plain_path(cfg: FleetConfig) -> None:
    planned = cfg.model_copy(
        update={"routes": {"voice:tools/call": "cpu", "embed.texts": "gpu", "voice:x": "tpu"}}
    )
    req = RouteRequest(
        "fleet.step", "llm.generate", "model", ("gpu", "cpu"), workflow="voice", path="tools#2/call"
    )
    assert route_key(req) == "voice:tools/call"
    decision = StaticPolicy().choose(req, FleetState(), planned, ProfileStore())
    assert decision.cls == "cpu" and decision.reason == "planned placement (routes)"
    by_op = RouteRequest("fleet.step", "embed.texts", "model", ("npu-lite", "gpu"), path="e[3]")
    assert StaticPolicy().choose(by_op, FleetState(), planned, ProfileStore()).cls == "gpu"
    # a route naming a class the node may not use is ignored: constraints come first
    odd = RouteRequest("fleet.step", "text.upper", "compute", ("cpu",), workflow="voice", path="x")
    assert StaticPolicy().choose(odd, FleetState(), planned, ProfileStore()).cls == "cpu"


def test_cost_sla_uses_the_planned_budget_of_a_node(cfg: FleetConfig) -> None:
    from fleet.routing.policies import CostSlaPolicy
    from fleet.routing.profiles import OpProfile
    from fleet.routing.state import WorkerInfo

    classes = dict(cfg.classes)
    classes["cpu"] = classes["cpu"].model_copy(update={"price_per_hour": 0.01})
    classes["gpu"] = classes["gpu"].model_copy(update={"price_per_hour": 1.0})
    priced = cfg.model_copy(update={"classes": classes})
    store = ProfileStore()
    store.put(OpProfile("x.op", "cpu", 0.2))  # cheap and slow
    store.put(OpProfile("x.op", "gpu", 0.03))  # dear and fast
    workers = {c: [WorkerInfo(f"{c}@h", (c,), 1, "prefork", 1, 0.0)] for c in ("cpu", "gpu")}
    state = FleetState(workers=workers, depth={"cpu": 0, "gpu": 0})
    req = RouteRequest(
        "fleet.step",
        "x.op",
        "compute",
        ("cpu", "gpu"),
        sla_left_s=10.0,
        remaining_steps=2,
        workflow="wf",
        path="tools#1/call",
    )
    even = CostSlaPolicy().choose(req, state, priced, store)
    assert even.cls == "cpu" and even.estimates["budget_s"] == 5.0  # an even split: 5 s
    planned = priced.model_copy(update={"budgets": {"wf:tools/call": 0.05}})
    tight = CostSlaPolicy().choose(req, state, planned, store)
    assert tight.cls == "gpu" and tight.estimates["budget_s"] == 0.05
    assert "planned budget" in tight.reason


def _two_classes(cfg: FleetConfig, cpu_s: float, gpu_s: float) -> tuple[Any, Any, Any]:
    from fleet.routing.profiles import OpProfile
    from fleet.routing.state import WorkerInfo

    store = ProfileStore()
    store.put(OpProfile("x.op", "cpu", cpu_s))
    store.put(OpProfile("x.op", "gpu", gpu_s))
    workers = {c: [WorkerInfo(f"{c}@h", (c,), 1, "prefork", 1, 0.0)] for c in ("cpu", "gpu")}
    state = FleetState(workers=workers, depth={"cpu": 0, "gpu": 0})
    req = RouteRequest(
        "fleet.step", "x.op", "compute", ("gpu", "cpu"), sla_left_s=10.0, workflow="wf", path="n"
    )
    return store, state, req


@pytest.mark.parametrize("policy", ["static", "preferred", "least-latency", "cost-sla"])
def test_every_policy_follows_the_plan_while_it_holds(cfg: FleetConfig, policy: str) -> None:
    """The plan put node n on cpu, although gpu is faster and preferred: each policy routes
    it to cpu while cpu keeps the node's planned budget (0.5 s; cpu takes 0.2 s)."""
    store, state, req = _two_classes(cfg, cpu_s=0.2, gpu_s=0.01)
    planned = cfg.model_copy(update={"routes": {"wf:n": "cpu"}, "budgets": {"wf:n": 0.5}})
    decision = make_policy(policy).choose(req, state, planned, store)
    assert decision.cls == "cpu" and "planned placement" in decision.reason
    unplanned = make_policy(policy).choose(req, state, cfg, store)
    assert unplanned.cls == "gpu"


@pytest.mark.parametrize("policy", ["least-latency", "cost-sla"])
def test_estimating_policies_leave_a_planned_class_that_is_late(
    cfg: FleetConfig, policy: str
) -> None:
    """cpu now takes 2 s, four times the planned budget: the step spills to gpu."""
    store, state, req = _two_classes(cfg, cpu_s=2.0, gpu_s=0.01)
    planned = cfg.model_copy(update={"routes": {"wf:n": "cpu"}, "budgets": {"wf:n": 0.5}})
    decision = make_policy(policy).choose(req, state, planned, store)
    assert decision.cls == "gpu" and "planned placement" not in decision.reason


def test_preferred_leaves_a_planned_class_without_workers(cfg: FleetConfig) -> None:
    from fleet.routing.state import WorkerInfo

    store, _, req = _two_classes(cfg, cpu_s=0.2, gpu_s=0.01)
    gpu_only = FleetState(workers={"gpu": [WorkerInfo("gpu@h", ("gpu",), 1, "prefork", 1, 0.0)]})
    planned = cfg.model_copy(update={"routes": {"wf:n": "cpu"}})
    assert make_policy("preferred").choose(req, gpu_only, planned, store).cls == "gpu"
