"""Each policy on constructed fleet states: ties, missing profiles, backlog, no workers, SLA."""

from __future__ import annotations

import heapq
import time

import pytest

from fleet.config import FleetConfig, load_config
from fleet.routing.estimate import RouteRequest, estimate
from fleet.routing.policies import CostSlaPolicy, LeastLatencyPolicy, PreferredPolicy
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.routing.router import FleetRouter
from fleet.routing.state import CachedState, FleetState, WorkerInfo
from tests.support.states import FixedReader

CLASSES = ("npu-lite", "gpu", "cpu")


def state(
    depth: dict[str, int] | None = None,
    busy: dict[str, int] | None = None,
    *live: str,
    online: dict[str, float] | None = None,
    slots: int = 1,
    stale: bool = False,
    fetched_at: float | None = None,
) -> FleetState:
    busy = busy or {}
    workers = {
        c: [WorkerInfo(f"{c}@h", (c,), slots, "prefork", 1, 0.0, busy.get(c, 0))] for c in live
    }
    return FleetState(workers, depth or {}, online or {}, fetched_at or time.time(), stale)


def store(**service: float) -> ProfileStore:
    s = ProfileStore()
    for cls, seconds in service.items():
        s.put(
            OpProfile("llm.generate", cls.replace("_", "-"), fixed_s=0.0, per_unit_s=seconds / 10)
        )
    return s


def req(units: float = 10, **kw: object) -> RouteRequest:
    return RouteRequest("fleet.step", "llm.generate", "model", CLASSES, units=units, **kw)  # type: ignore[arg-type]


def fifo_start(slots: int, running: int, queued: int, step_s: float, left_s: float) -> float:
    """When a new step starts, on an exact first-come-first-served schedule: ``running``
    steps with ``left_s`` to go each, ``queued`` steps of ``step_s`` ahead of it, ``slots``
    slots (the textbook multi-server queue, worked step by step -- not the router's formula)."""
    free = [left_s] * running + [0.0] * (slots - running)
    heapq.heapify(free)
    for _ in range(queued):
        heapq.heappush(free, heapq.heappop(free) + step_s)
    return heapq.heappop(free)


def test_estimate_combines_wait_service_and_movement(cfg: FleetConfig) -> None:
    # npu-lite: a prefork class, whose slots are processes of their own (no batch)
    st = state({"npu-lite": 3}, {"npu-lite": 1}, "npu-lite", online={"*|npu-lite|s": 0.5}, slots=2)
    est = estimate(req(input_bytes=5_000_000), "npu-lite", st, store(npu_lite=0.2), cfg)
    # 3 queued of 0.5 s, 1 running, 2 slots: the new step starts at 0.5 s on the schedule if
    # the running one is about to end, at 1.0 s if it just began (worked out by hand: slot A
    # takes q1 at 0; slot B frees at 0 or 0.5 and takes q2; q3 and then it follow)
    assert fifo_start(2, 1, 3, 0.5, 0.0) == 0.5 and fifo_start(2, 1, 3, 0.5, 0.5) == 1.0
    assert 0.5 <= est.wait_s <= 1.0
    assert est.service_s == pytest.approx(0.2) and est.source == "profile"
    assert est.move_s == pytest.approx(0.005)  # 5 MB at 1000 MB/s
    assert est.cost == pytest.approx(0.15 / 3600 * 0.2)  # npu-lite: 0.15 an hour


def test_online_ratio_corrects_the_profile(cfg: FleetConfig) -> None:
    st = state(None, None, "gpu", online={"llm.generate|gpu|ratio": 2.0})
    assert estimate(req(), "gpu", st, store(gpu=0.2), cfg).service_s == pytest.approx(0.4)


def test_missing_profile_uses_online_then_default(cfg: FleetConfig) -> None:
    st = state(None, None, "cpu", online={"llm.generate|cpu|s": 1.7})
    est = estimate(req(), "cpu", st, ProfileStore(), cfg)
    assert (est.service_s, est.source) == (1.7, "online")
    est = estimate(req(), "cpu", state(None, None, "cpu"), ProfileStore(), cfg)
    assert (est.service_s, est.source) == (cfg.default_service_s, "default")


def test_least_latency_picks_fastest_and_breaks_ties_by_preference(cfg: FleetConfig) -> None:
    live = ("npu-lite", "gpu", "cpu")
    d = LeastLatencyPolicy().choose(
        req(), state(None, None, *live), cfg, store(npu_lite=0.5, gpu=0.1, cpu=2.0)
    )
    assert d.cls == "gpu" and set(d.estimates) == set(live)
    d = LeastLatencyPolicy().choose(
        req(), state(None, None, *live), cfg, store(npu_lite=0.3, gpu=0.3, cpu=0.3)
    )
    assert d.cls == "npu-lite"  # a tie goes to the more preferred class


def test_least_latency_spills_when_the_fast_class_backs_up(cfg: FleetConfig) -> None:
    profiles = store(npu_lite=0.5, gpu=0.1, cpu=2.0)
    backed_up = state({"gpu": 20}, {"gpu": 1}, "npu-lite", "gpu", "cpu")
    d = LeastLatencyPolicy().choose(req(), backed_up, cfg, profiles)
    assert d.cls == "npu-lite"
    assert d.estimates["gpu"].wait_s > d.estimates["npu-lite"].total_s


def test_cost_sla_takes_the_cheapest_class_that_fits(cfg: FleetConfig) -> None:
    # cost = price per hour x busy time: cpu 0.05 x 0.4 s < gpu 0.25 x 0.1 s < npu 0.15 x 0.5 s
    profiles = store(npu_lite=0.5, gpu=0.1, cpu=0.4)
    live = state(None, None, "npu-lite", "gpu", "cpu")
    d = CostSlaPolicy().choose(req(sla_left_s=10.0), live, cfg, profiles)
    assert d.cls == "cpu" and "cheapest" in d.reason
    # 0.3 s: cpu's 0.4 s does not fit, the next cheapest (gpu) does
    assert CostSlaPolicy().choose(req(sla_left_s=0.3), live, cfg, profiles).cls == "gpu"
    # 0.1 s over 2 remaining steps: nothing fits 0.05 s, so the fastest (spill)
    d = CostSlaPolicy().choose(req(sla_left_s=0.1, remaining_steps=2), live, cfg, profiles)
    assert d.cls == "gpu" and d.reason.startswith("spill") and d.estimates["budget_s"] == 0.05


def test_cost_sla_spills_from_a_backed_up_cheap_class(cfg: FleetConfig) -> None:
    profiles = store(npu_lite=0.5, gpu=0.1, cpu=0.4)
    quiet = state(None, None, "npu-lite", "gpu", "cpu")
    assert CostSlaPolicy().choose(req(sla_left_s=2.0), quiet, cfg, profiles).cls == "cpu"
    flooded = state({"cpu": 30}, {"cpu": 1}, "npu-lite", "gpu", "cpu", online={"*|cpu|s": 0.5})
    d = CostSlaPolicy().choose(req(sla_left_s=2.0), flooded, cfg, profiles)
    # 30 queued of 0.5 s behind one running on one slot: 15 s to 15.5 s on the schedule
    assert d.cls == "gpu" and 15.0 <= d.estimates["cpu"].wait_s <= 15.5


GRID = [(s, r, q) for s in (1, 2, 4, 8) for r in (0, 1, 4, 8) for q in (0, 1, 3, 10, 33) if r <= s]


@pytest.mark.parametrize("slots, running, queued", GRID)
def test_the_wait_estimate_lies_within_the_exact_schedules_bounds(
    cfg: FleetConfig, slots: int, running: int, queued: int
) -> None:
    """Whatever is left of the running steps, the new step starts between the schedule where
    they are about to end and the one where they just began: the estimate stays in there."""
    st = state({"cpu": queued}, {"cpu": running}, "cpu", online={"*|cpu|s": 0.5}, slots=slots)
    wait = estimate(req(), "cpu", st, store(cpu=0.2), cfg).wait_s
    low, high = (
        fifo_start(slots, running, queued, 0.5, 0.0),
        fifo_start(slots, running, queued, 0.5, 0.5),
    )
    assert low - 1e-9 <= wait <= high + 1e-9, (low, wait, high)


@pytest.mark.parametrize("policy", [PreferredPolicy(), LeastLatencyPolicy(), CostSlaPolicy()])
def test_no_live_worker_behaviour_is_configured(policy: object) -> None:
    base = load_config(env={})
    profiles = store(gpu=0.1)
    only_cpu = state(None, None, "cpu")
    nobody = state()
    fallback = base.model_copy(update={"no_worker": "fallback"})
    assert policy.choose(req(), only_cpu, fallback, profiles).cls == "cpu"  # type: ignore[attr-defined]
    d = policy.choose(req(), nobody, fallback, profiles)  # type: ignore[attr-defined]
    assert d.cls == "npu-lite" and "waiting" in d.reason and d.fail is None
    wait = base.model_copy(update={"no_worker": "wait"})
    d = policy.choose(req(), only_cpu, wait, profiles)  # type: ignore[attr-defined]
    assert d.cls == "npu-lite" and d.fail is None
    fail = base.model_copy(update={"no_worker": "fail"})
    d = policy.choose(req(), nobody, fail, profiles)  # type: ignore[attr-defined]
    assert d.fail and "no live worker in any class that can run llm.generate" in d.fail


CALL = {"op": "llm.generate", "kind": "model", "classes": list(CLASSES), "args": {}}


def test_stale_state_falls_back_to_the_preferred_class(cfg: FleetConfig) -> None:
    old = state({"npu-lite": 50}, None, "npu-lite", "gpu", stale=True, fetched_at=time.time() - 60)
    router = FleetRouter(
        cfg.model_copy(update={"policy": "least-latency"}), CachedState(FixedReader(cfg, old), 60)
    )
    assert router("fleet.step", (), {"call": CALL, "run": {}}, {}) == {"queue": "npu-lite"}
    fresh = state({"npu-lite": 50}, None, "npu-lite", "gpu")
    router = FleetRouter(
        cfg.model_copy(update={"policy": "least-latency"}), CachedState(FixedReader(cfg, fresh), 60)
    )
    assert router("fleet.step", (), {"call": CALL, "run": {}}, {}) == {"queue": "gpu"}


def test_a_run_can_choose_its_policy(cfg: FleetConfig) -> None:
    fresh = state({"npu-lite": 50}, None, "npu-lite", "gpu")
    router = FleetRouter(cfg, CachedState(FixedReader(cfg, fresh), 60))  # default: preferred
    assert router("fleet.step", (), {"call": CALL, "run": {}}, {}) == {"queue": "npu-lite"}
    run = {"policy": "least-latency"}
    assert router("fleet.step", (), {"call": CALL, "run": run}, {}) == {"queue": "gpu"}


def test_a_new_profile_file_is_seen_within_one_snapshot(cfg: FleetConfig) -> None:
    st = state(None, None, "gpu")
    assert estimate(req(), "gpu", st, store(gpu=0.2), cfg).service_s == pytest.approx(0.2)
    # the snapshot caches per-(op, class) figures; another profile store must not reuse them
    assert estimate(req(), "gpu", st, store(gpu=0.9), cfg).service_s == pytest.approx(0.9)
    assert estimate(req(units=20), "gpu", st, store(gpu=0.9), cfg).service_s == pytest.approx(1.8)


def test_a_batching_class_is_estimated_at_the_occupancy_the_step_joins(cfg: FleetConfig) -> None:
    """gpu: a thread pool of 8 sequences in one process. A step that joins 3 others runs at
    occupancy 4: 4 steps share the process's throughput, sped up by the measured batch."""
    gpu = cfg.classes["gpu"].model_copy(update={"pool": "threads", "concurrency": 8})
    cfg = cfg.model_copy(update={"classes": {**cfg.classes, "gpu": gpu}})
    profiles = ProfileStore()
    profiles.put(OpProfile("llm.generate", "gpu", 0.0, 0.1, batch={"4": 2.0, "8": 3.0}))
    idle = estimate(req(), "gpu", state({}, {}, "gpu", slots=8), profiles, cfg)
    assert idle.service_s == pytest.approx(1.0) and idle.occupancy == 1
    joined = estimate(req(), "gpu", state({}, {"gpu": 3}, "gpu", slots=8), profiles, cfg)
    assert joined.occupancy == 4 and joined.wait_s == 0.0
    assert joined.service_s == pytest.approx(1.0 * 4 / 2.0)
    assert joined.cost == pytest.approx(0.25 / 3600 * 2.0 / 4)  # the process's time, shared
    assert joined.brief()["occupancy"] == 4
    six = estimate(req(), "gpu", state({}, {"gpu": 5}, "gpu", slots=8), profiles, cfg)
    assert six.service_s == pytest.approx(6 / 2.5)  # 2.5: between 4 (2.0) and 8 (3.0)
    full = estimate(req(), "gpu", state({"gpu": 4}, {"gpu": 8}, "gpu", slots=8), profiles, cfg)
    assert full.occupancy == 8 and full.service_s == pytest.approx(8 / 3.0)
    assert full.wait_s > 0  # 4 queued behind a full batch
    # Not measured: model steps take turns (k at once take k times as long); other steps
    # (a tool waiting on I/O) run side by side.
    turns = ProfileStore()
    turns.put(OpProfile("llm.generate", "gpu", 0.0, 0.1))
    shared = estimate(req(), "gpu", state({}, {"gpu": 3}, "gpu", slots=8), turns, cfg)
    assert shared.service_s == pytest.approx(4.0)
    tool = RouteRequest("fleet.step", "llm.generate", "tool", CLASSES, units=10)
    aside = estimate(tool, "gpu", state({}, {"gpu": 3}, "gpu", slots=8), turns, cfg)
    assert aside.service_s == pytest.approx(1.0) and aside.occupancy == 4


def test_batch_speedup_interpolates_and_stays_flat_past_the_last_level() -> None:
    p = OpProfile("llm.generate", "gpu", 1.0, batch={"2": 1.5, "8": 2.7})
    assert [p.speedup(k) for k in (1, 2, 5, 8, 16)] == pytest.approx([1.0, 1.5, 2.1, 2.7, 2.7])
    assert p.predict(0, 8) == pytest.approx(8 / 2.7)
    assert OpProfile("x", "gpu", 1.0).predict(0, 4) == pytest.approx(1.0)
    assert OpProfile("x", "gpu", 1.0).predict(0, 4, takes_turns=True) == pytest.approx(4.0)
