"""The planner sizes a batching class from its throughput at batch: a worker whose slots
are one process's batch serves them at the measured speed-up, not as separate processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import plan
from fleet.planning.simulate import simulate
from fleet.planning.workload import WorkflowLoad, load_workload

CATALOGUE = """
[devices.acc]
capex = 10000
power_w = 300
network_gbs = 10
slots = 8
batches = true
[ops."text"]
acc = {{ fixed_s = 0.1, per_unit_s = 0.0, source = "assumed: test", batch = {batch} }}
"""
FLOW = """name: shout
inputs: [t]
nodes:
  - {name: up, op: text.upper, inputs: {text: inputs.t}}
outputs: {t: up.text}
"""


def _setup(tmp_path: Path, batch: str, rate: float) -> tuple[Catalogue, list[WorkflowLoad]]:
    (tmp_path / "cat.toml").write_text(CATALOGUE.format(batch=batch))
    (tmp_path / "shout.yaml").write_text(FLOW)
    (tmp_path / "load.yaml").write_text(
        f"workflows:\n  - {{file: shout.yaml, rate: {rate}, sla_p95_s: 5}}\n"
    )
    cat = Catalogue.load(tmp_path / "cat.toml")
    return cat, load_workload(tmp_path / "load.yaml", cat.splits)


def test_a_step_on_a_batching_device_takes_its_share_of_a_full_batch(tmp_path: Path) -> None:
    cat, _ = _setup(tmp_path, '{ "2" = 1.9, "4" = 3.5, "8" = 6.4 }', 1.0)
    assert cat.step_time("acc", "text.upper", 1) == pytest.approx(0.1 * 8 / 6.4)
    model = cat.latency("acc", "text.upper")
    assert model is not None and model.at_batch(1, 3) == pytest.approx(0.1 * 3 / 2.7)


@pytest.mark.parametrize("rate", [20.0, 60.0])
def test_workers_follow_the_throughput_at_batch(tmp_path: Path, rate: float) -> None:
    """8 sequences at 6.4x serve 64 steps/s per worker; at 2x only 20: a poor batch curve
    buys more workers for the same load, each sized by the ceiling (0.7)."""
    sized = {}
    for name, batch in (("good", '{ "8" = 6.4 }'), ("poor", '{ "8" = 2.0 }')):
        folder = tmp_path / name
        folder.mkdir()
        cat, flows = _setup(folder, batch, rate)
        result = plan(flows, cat)
        per_worker = {"good": 6.4, "poor": 2.0}[name] / 0.1  # steps/s at a full batch
        assert result.workers["acc"] >= rate / (0.7 * per_worker) - 1e-9
        assert result.utilisation["acc"] == pytest.approx(
            rate / (result.workers["acc"] * per_worker)
        )
        sized[name] = result.workers["acc"]
    assert sized["poor"] > sized["good"]


def test_the_simulator_serves_the_planned_batching_fleet(tmp_path: Path) -> None:
    cat, flows = _setup(tmp_path, '{ "8" = 6.4 }', 20.0)
    result = plan(flows, cat)
    sim = simulate(flows, cat, result.workers, result.placement, duration_s=60, seed=1)
    assert sim.sla_met["shout"]
    assert sim.latency["shout"]["p50_s"] < 0.1 * 8 / 6.4 + 0.05  # mostly below a full batch


def test_a_bad_batch_curve_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cat.toml").write_text(CATALOGUE.format(batch='{ "1" = 2.0 }'))
    with pytest.raises(ConfigError, match=r'\[ops."text".acc\].*batch: 1 = 2.0'):
        Catalogue.load(tmp_path / "cat.toml")
