"""The static policy follows a plan's placement (`routes`), never outside the eligible classes."""

from __future__ import annotations

from fleet.config import FleetConfig
from fleet.routing.policies import RouteRequest, StaticPolicy, route_key
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
