"""The simulator: queueing it reproduces, the live fleet's policy objects it routes with,
and its speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import plan
from fleet.planning.simulate import simulate
from fleet.planning.workload import load_workload
from tests.unit.planning.test_planner import EXAMPLE, _setup


def test_a_single_queue_matches_pollaczek_khinchine(tmp_path: Path) -> None:
    # one step (prefill, 1000 tokens = 0.05 s on `fast`), one server, 10 per second: rho 0.5
    cat, flows = _setup(tmp_path, net=50.0, rate=10.0, sla=5.0)
    flows[0].graph.remove_node("prompt")
    flows[0].graph.remove_node("answer:decode")
    res = simulate(flows, cat, {"fast": 1}, policy="plan", duration_s=2000, cv=1.0, seed=3)
    s, rho = 0.05, 0.5
    wq = 10.0 * (1 + 1.0**2) * s * s / (2 * (1 - rho))  # M/G/1 mean wait
    assert res.latency["ask"]["mean_s"] == pytest.approx(s + wq, rel=0.08)
    assert res.utilisation["fast"] == pytest.approx(rho, rel=0.05)


def test_the_plan_holds_in_simulation_and_the_live_policies_route_it() -> None:
    cat = Catalogue.load()
    flows = load_workload(EXAMPLE, cat.splits)
    fleet = plan(flows, cat)
    planned = simulate(flows, cat, fleet.workers, fleet.placement, "plan", duration_s=60)
    assert all(planned.sla_met.values()), planned.latency
    for f in flows:  # the queueing estimate and the simulation agree on the median
        predicted = fleet.predicted[f.name]["p50_s"]
        assert planned.latency[f.name]["p50_s"] == pytest.approx(predicted, rel=0.25)
    routed = simulate(flows, cat, fleet.workers, fleet.placement, "least-latency", 60)
    assert routed.steps == planned.steps > 10_000 and all(routed.sla_met.values())
    assert routed.steps_per_s > 1000


def test_an_empty_fleet_or_a_step_with_no_live_class_is_an_error(tmp_path: Path) -> None:
    cat, flows = _setup(tmp_path, net=50.0, rate=1.0, sla=5.0, extra=", sensitivity: confidential")
    with pytest.raises(ValueError, match="no workers"):
        simulate(flows, cat, {}, policy="least-latency", duration_s=5)
    # confidential work may run on `fast` only: a fleet of `cheap` cannot take it
    with pytest.raises(ValueError, match=r"no live class can run llm\.prompt"):
        simulate(flows, cat, {"cheap": 2}, policy="least-latency", duration_s=5)


def test_a_batching_class_slows_its_steps_by_the_measured_batch(tmp_path: Path) -> None:
    """One `fast` worker whose 8 slots are one process's batch: 8 steps at once run at 2x
    the throughput of one, so each takes 4x as long as alone. Without `batches` the 8 slots
    are 8 servers and a step takes its time alone."""
    from dataclasses import replace

    from fleet.planning.simmodel import catalogue_model
    from fleet.planning.simulate import simulate_model

    cat, flows = _setup(tmp_path, net=50.0, rate=120.0, sla=5.0)
    flows[0].graph.remove_node("prompt")
    flows[0].graph.remove_node("answer:decode")
    (step,) = flows[0].steps()
    results = {}
    for batches in (False, True):
        model = catalogue_model(flows, cat, {"fast": 1}, cv=0.0)
        model.classes["fast"] = replace(model.classes["fast"], servers=8, batches=batches)
        alone = model.profiles.get(step.op, "fast")
        assert alone is not None
        model.profiles.put(replace(alone, batch={"8": 2.0}))
        res = simulate_model(flows, model, None, "plan", duration_s=200, seed=1)
        results[batches] = res.latency["ask"]["p50_s"]
    # 120/s of 0.05 s steps: 6 busy of 8 independent servers, nearly no queue; as a batch
    # the offered load (6 at 0.05 s) exceeds what the batch serves (2x one server).
    assert results[False] == pytest.approx(0.05, rel=0.1)
    assert results[True] > 4 * results[False]
