"""Prefix affinity: a run's next step of an op that keeps prompt prefixes goes to the worker
that ran its last one -- while that worker is alive, serves the step's classes, has room,
and is not much slower by the policy's own estimate -- and the reason says which it was."""

from __future__ import annotations

import time

import pytest
from kombu.entity import Queue

from fleet.config import FleetConfig
from fleet.constants import AFFINITY_FIELD
from fleet.routing import affinity
from fleet.routing.estimate import RouteRequest
from fleet.routing.policies import LeastLatencyPolicy, RouteDecision
from fleet.routing.router import FleetRouter
from fleet.routing.state import CachedState, FleetState, WorkerInfo
from fleet.sdk.registry import registry
from tests.support.states import FixedReader
from tests.unit.routing.test_policies import CALL, req, store

HOLDER = "gpu-2@h"


def fleet(busy: int = 0, slots: int = 8, stale: bool = False) -> FleetState:
    """Two gpu workers (batching, ``slots`` sequences each) and one npu-lite worker."""
    gpu = [
        WorkerInfo("gpu-1@h", ("gpu",), slots, "threads", 1, 0.0),
        WorkerInfo(HOLDER, ("gpu",), slots, "threads", 2, 0.0, busy),
    ]
    npu = [WorkerInfo("npu-lite@h", ("npu-lite",), 1, "prefork", 3, 0.0)]
    return FleetState({"gpu": gpu, "npu-lite": npu}, {}, {}, time.time(), stale)


def chosen(cls: str = "gpu") -> RouteDecision:
    return RouteDecision(cls, cls, "preferred", "preferred class")


def test_llm_generate_keeps_prefixes_and_the_run_remembers_where(cfg: FleetConfig) -> None:
    assert registry.get("llm.generate").prefix_cache
    assert not registry.get("text.upper").prefix_cache
    run = affinity.remember({"id": "r"}, "llm.generate", HOLDER)
    assert affinity.holder(run, "llm.generate") == HOLDER
    assert affinity.holder(run, "llm.prefill") is None and affinity.holder({}, "x") is None
    assert affinity.holder(affinity.forget(run, HOLDER), "llm.generate") is None
    assert run[AFFINITY_FIELD] == {"llm.generate": HOLDER}


def test_the_step_goes_to_the_holder_while_it_has_room(cfg: FleetConfig) -> None:
    d = affinity.apply(req(), chosen(), HOLDER, fleet(busy=3), cfg)
    assert d.worker == HOLDER and d.cls == "gpu" and d.queue == f"{HOLDER}.dq2"
    assert d.reason.startswith(f"prefix affinity: {HOLDER} holds this run's prefix")
    assert "the policy chose gpu: preferred class" in d.reason
    # full, and one step to wait for (affinity_queue = 1): still worth it
    assert affinity.apply(req(), chosen(), HOLDER, fleet(busy=8), cfg).worker == HOLDER
    # two to wait for: the policy's choice, and why
    d = affinity.apply(req(), chosen(), HOLDER, fleet(busy=8), cfg, sent_here=1)
    assert d.worker is None and d.queue == "gpu"
    assert d.reason == (
        f"preferred class; prefix affinity dropped: {HOLDER} has 9 steps on 8 slots (2 to wait for)"
    )
    strict = cfg.model_copy(update={"affinity_queue": 0})
    assert affinity.apply(req(), chosen(), HOLDER, fleet(busy=8), strict).worker is None


def test_a_gone_or_unfit_holder_leaves_the_policy_choice(cfg: FleetConfig) -> None:
    d = affinity.apply(req(), chosen(), "gpu-9@h", fleet(), cfg)
    assert d.worker is None and d.reason.endswith("prefix affinity dropped: gpu-9@h is gone")
    only_npu = RouteRequest("fleet.step", "llm.generate", "model", ("npu-lite",), units=10)
    d = affinity.apply(only_npu, chosen("npu-lite"), HOLDER, fleet(), cfg)
    assert d.worker is None and "serves none of the step's classes" in d.reason
    off = cfg.model_copy(update={"prefix_affinity": False})
    assert affinity.apply(req(), chosen(), HOLDER, fleet(), off) == chosen()
    assert affinity.apply(req(), chosen(), HOLDER, fleet(stale=True), cfg) == chosen()


def test_the_holder_may_be_on_another_class_within_the_slack(cfg: FleetConfig) -> None:
    """least-latency picks npu-lite; the holder (gpu) is estimated 0.3 s later: kept. At
    3 s later (over affinity_slack_s = 2 s) the prefix is not worth it."""
    near = LeastLatencyPolicy().choose(req(), fleet(), cfg, store(npu_lite=0.5, gpu=0.8))
    assert near.cls == "npu-lite"
    d = affinity.apply(req(), near, HOLDER, fleet(), cfg)
    assert d.worker == HOLDER and d.cls == "gpu" and "the policy chose npu-lite" in d.reason
    far = LeastLatencyPolicy().choose(req(), fleet(), cfg, store(npu_lite=0.5, gpu=3.5))
    d = affinity.apply(req(), far, HOLDER, fleet(), cfg)
    assert d.worker is None and "gpu is estimated 3.00s later than npu-lite" in d.reason


def test_the_router_sends_to_the_holders_own_queue_and_counts_it(cfg: FleetConfig) -> None:
    router = FleetRouter(cfg, CachedState(FixedReader(cfg, fleet(busy=7)), 60))
    run = affinity.remember({"id": "r"}, "llm.generate", HOLDER)
    route = router("fleet.step", (), {"call": CALL, "run": run}, {})
    queue = route["queue"]
    assert isinstance(queue, Queue) and queue.name == f"{HOLDER}.dq2"
    assert queue.routing_key == HOLDER and queue.exchange.name == "C.dq2"  # Celery's own
    router("fleet.step", (), {"call": CALL, "run": run}, {})  # 7 busy + 1 sent: full
    third = router("fleet.step", (), {"call": CALL, "run": run}, {})  # 2 to wait for
    assert third == {"queue": "npu-lite"}  # the preferred class of CALL
    # a step of another op, or of a run without a holder, goes by the policy alone
    other = {**CALL, "op": "llm.prefill"}
    assert router("fleet.step", (), {"call": other, "run": run}, {}) == {"queue": "npu-lite"}


@pytest.mark.parametrize(
    ("broker", "queues", "arguments"),
    [
        ("redis://h/0", "classic", None),
        ("amqp://h//", "classic", {"x-max-priority": 9}),  # as the worker declares it
        ("amqp://h//", "quorum", None),
    ],
)
def test_the_direct_queue_is_declared_as_its_worker_declares_it(
    cfg: FleetConfig, broker: str, queues: str, arguments: dict[str, int] | None
) -> None:
    c = cfg.model_copy(update={"broker_url": broker, "amqp_queues": queues})
    assert affinity.direct_queue(c, HOLDER).queue_arguments == arguments
