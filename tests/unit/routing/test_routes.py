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
