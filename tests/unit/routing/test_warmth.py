"""Routing counts a cold start: a class whose processes have not run a model op yet pays
what a process's first step of it took beyond the service time, measured where it ran."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from fleet.config import FleetConfig
from fleet.routing.estimate import estimate
from fleet.routing.policies import CostSlaPolicy, LeastLatencyPolicy
from fleet.routing.state import FleetState, WorkerInfo
from tests.unit.routing.test_policies import req, store

FIRST_S = 2.5  # a process's first llm.generate step, measured on gpu
LOAD_S = FIRST_S - 0.5  # beyond npu-lite's 0.5 s service time


def fleet(depth: dict[str, int] | None = None, npu_slots: int = 1, npu_warm: int = 0) -> FleetState:
    """gpu has run llm.generate (its first step took 2.5 s); npu-lite has, in ``npu_warm``
    of its ``npu_slots`` prefork processes (its first took 0.6 s: preloaded)."""
    gpu = WorkerInfo(
        "gpu@h",
        ("gpu",),
        1,
        "prefork",
        1,
        0.0,
        warm={"llm.generate": 1},
        cold={"llm.generate": FIRST_S},
    )
    npu = WorkerInfo(
        "npu-lite@h",
        ("npu-lite",),
        npu_slots,
        "prefork",
        2,
        0.0,
        warm={"llm.generate": npu_warm} if npu_warm else {},
        cold={"llm.generate": 0.6} if npu_warm else {},
    )
    return FleetState({"gpu": [gpu], "npu-lite": [npu]}, depth or {}, {}, time.time())


def test_a_class_that_never_loaded_the_model_pays_its_load(cfg: FleetConfig) -> None:
    st = fleet()
    assert st.cold_start("npu-lite", "llm.generate") == (1.0, FIRST_S)  # measured on gpu
    assert st.cold_start("gpu", "llm.generate") == (0.0, FIRST_S)
    assert st.cold_start("gpu", "text.upper") == (0.0, 0.0)  # nothing known: nothing charged
    est = estimate(req(), "npu-lite", st, store(npu_lite=0.5, gpu=0.8), cfg)
    assert est.cold_s == pytest.approx(LOAD_S) and est.total_s == pytest.approx(0.5 + LOAD_S)
    assert est.brief()["cold_s"] == LOAD_S


def test_least_latency_keeps_a_step_where_its_model_is_warm(cfg: FleetConfig) -> None:
    """npu-lite's profile is faster, but the step would wait for a 2 s load there: the
    9.5 s tail of least-latency at one run in flight (issue 27) came from such loads."""
    d = LeastLatencyPolicy().choose(req(), fleet(), cfg, store(npu_lite=0.5, gpu=0.8))
    assert d.cls == "gpu"
    assert d.estimates["npu-lite"].cold_s == pytest.approx(LOAD_S)
    assert d.reason.endswith("cold start counted: npu-lite +2.00s")
    # once npu-lite holds it, its faster service wins
    d = LeastLatencyPolicy().choose(req(), fleet(npu_warm=1), cfg, store(npu_lite=0.5, gpu=0.8))
    assert d.cls == "npu-lite"


def test_a_backlog_longer_than_the_load_still_spills(cfg: FleetConfig) -> None:
    d = LeastLatencyPolicy().choose(req(), fleet({"gpu": 5}), cfg, store(npu_lite=0.5, gpu=0.8))
    assert d.cls == "npu-lite"  # 5 x 0.8 s of queue on gpu > a 2 s load


def test_half_warm_processes_pay_half_the_load_on_average(cfg: FleetConfig) -> None:
    st = fleet(npu_slots=2, npu_warm=1)
    assert st.cold_start("npu-lite", "llm.generate") == (0.5, 0.6)  # its own measurement
    st = FleetState(
        {**st.workers, "npu-lite": [replace(st.workers["npu-lite"][0], cold={})]}, {}, {}, 1.0
    )
    assert st.cold_start("npu-lite", "llm.generate") == (0.5, FIRST_S)  # gpu's: none of its own
    est = estimate(req(), "npu-lite", st, store(npu_lite=0.5, gpu=0.8), cfg)
    assert est.cold_s == pytest.approx(LOAD_S / 2)


def test_a_load_costs_money_too(cfg: FleetConfig) -> None:
    est = estimate(req(), "npu-lite", fleet(), store(npu_lite=0.5, gpu=0.8), cfg)
    price = cfg.classes["npu-lite"].price_per_hour / 3600
    assert est.cost == pytest.approx(price * (0.5 + LOAD_S))
    d = CostSlaPolicy().choose(req(), fleet(), cfg, store(npu_lite=0.5, gpu=0.8))
    assert d.estimates["npu-lite"].cost == pytest.approx(est.cost)
