from __future__ import annotations

import pytest

from fleet.config import FleetConfig
from fleet.routing.estimate import RouteRequest
from fleet.routing.policies import PreferredPolicy, StaticPolicy, make_policy
from fleet.routing.profiles import ProfileStore
from fleet.routing.router import FleetRouter, take_decision
from fleet.routing.state import CachedState, FleetState, WorkerInfo
from tests.support.states import FixedReader


def _state(*live: str) -> FleetState:
    workers = {c: [WorkerInfo(f"{c}@h", (c,), 1, "prefork", 1, 0.0)] for c in live}
    return FleetState(workers=workers, depth={}, fetched_at=0.0)


NO_PROFILES = ProfileStore()
REQ = RouteRequest("fleet.step", "text.upper", "compute", ("gpu", "cpu", "io"))


def test_preferred_policy_uses_preferred_when_live(cfg: FleetConfig) -> None:
    d = PreferredPolicy().choose(REQ, _state("gpu", "cpu"), cfg, NO_PROFILES)
    assert (d.cls, d.queue, d.policy) == ("gpu", "gpu", "preferred")


def test_preferred_policy_falls_back_in_eligibility_order(cfg: FleetConfig) -> None:
    d = PreferredPolicy().choose(REQ, _state("io", "cpu"), cfg, NO_PROFILES)
    assert d.cls == "cpu" and "no live worker for preferred 'gpu'" in d.reason


def test_preferred_policy_never_leaves_eligible_classes(cfg: FleetConfig) -> None:
    d = PreferredPolicy().choose(REQ, _state("npu-lite"), cfg, NO_PROFILES)
    assert d.cls == "gpu" and "waiting in queue" in d.reason


def test_static_policy_ignores_liveness(cfg: FleetConfig) -> None:
    assert StaticPolicy().choose(REQ, _state("cpu"), cfg, NO_PROFILES).cls == "gpu"


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_policy("fastest")


CALL = {
    "op": "text.upper",
    "kind": "compute",
    "classes": ["gpu", "cpu"],
    "args": {},
}


def _router(cfg: FleetConfig, *live: str) -> tuple[FleetRouter, FixedReader]:
    reader = FixedReader(cfg, _state(*live))
    return FleetRouter(cfg, CachedState(reader, ttl=60)), reader


def test_router_routes_steps_and_records_decision(cfg: FleetConfig) -> None:
    router, reader = _router(cfg, "cpu")
    for _ in range(3):
        assert router("fleet.step", (), {"call": CALL}, {}) == {"queue": "cpu"}
    assert reader.reads == 1  # cached: one read for many decisions
    decision = take_decision("fleet.step")
    assert decision is not None and decision.cls == "cpu"
    assert take_decision("fleet.step") is None  # consumed once


def test_router_leaves_other_tasks_and_explicit_queues_alone(cfg: FleetConfig) -> None:
    router, _ = _router(cfg, "cpu")
    assert router("myapp.add", (), {}, {}) is None
    assert router("fleet.step", (), {"call": CALL}, {"queue": "special"}) is None
    assert router("fleet.step", (), {"call": CALL}, {"routing_key": "gpu"}) is None


def test_state_reader_keeps_one_broker_client(cfg: FleetConfig) -> None:
    from fleet.routing.depth import AmqpDepth, RedisDepth
    from fleet.routing.state import StateReader

    split = cfg.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "result_backend": "redis://127.0.0.1:2/0"}
    )
    reader = StateReader(split)
    first, second = reader.depth_reader(), reader.depth_reader()  # connects to nothing yet
    assert isinstance(first, RedisDepth) and first is second  # not a new client per refresh
    assert first.client.connection_pool.connection_kwargs["port"] == 1  # the broker's
    rabbit = StateReader(split.model_copy(update={"broker_url": "amqp://u:p@127.0.0.1:1//"}))
    assert isinstance(rabbit.depth_reader(), AmqpDepth)
    other = StateReader(split.model_copy(update={"broker_url": "sqs://"}))
    assert other.depth_reader() is None  # shown as '?', routing uses busy counts


def test_amqp_depth_unreachable_is_unknown_not_an_error() -> None:
    from fleet.routing.depth import AmqpDepth

    reader = AmqpDepth("amqp://guest:secret@127.0.0.1:1//", timeout=0.5)
    assert reader.read(["gpu", "cpu"]) == {}
