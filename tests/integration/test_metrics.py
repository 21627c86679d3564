"""Prometheus metrics per class, read from the live fleet."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet
from fleet.measurement.metrics import FleetCollector

pytestmark = pytest.mark.integration


def test_metrics_show_workers_slots_and_depth(
    fleet_cfg: FleetConfig, local_fleet: LocalFleet
) -> None:
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet_cfg))
    text = generate_latest(registry).decode()
    assert 'fleet_workers{class="cpu"} 1.0' in text
    assert 'fleet_slots{class="io"} 8.0' in text  # tests/fleet-test.toml: io concurrency 8
    assert 'fleet_workers{class="tpu"} 0.0' in text
    assert 'fleet_queue_depth{class="gpu"} 0.0' in text
    assert "fleet_busy_steps" in text and "fleet_state_up 1.0" in text
    # a slot's price x live slots (cpu: prefork x 2), as routing charges a step
    cpu = fleet_cfg.classes["cpu"]
    assert f'fleet_cost_per_hour{{class="cpu"}} {cpu.price_per_hour * 2}' in text
    gpu = fleet_cfg.classes["gpu"]  # batching: 8 slots share one worker's device
    assert gpu.batches and f'fleet_cost_per_hour{{class="gpu"}} {gpu.price_per_hour}' in text


def test_a_counter_first_seen_after_the_first_scrape_starts_at_zero(fleet_cfg: FleetConfig) -> None:
    collector = FleetCollector(fleet_cfg)
    old = {"runs|succeeded|a": "7"}
    assert collector.from_zero(old) == old  # there at the first scrape: its value
    grown = {"runs|succeeded|a": "8", "runs|failed|a": "1", "sla_miss||b": "1"}
    assert collector.from_zero(grown) == {
        "runs|succeeded|a": "8",
        "runs|failed|a": "0",
        "sla_miss||b": "0",
    }
    assert collector.from_zero(grown) == grown  # then its value


def test_metrics_answer_when_the_backend_is_down(fleet_cfg: FleetConfig) -> None:
    from fleet.deploy.local import free_port

    down = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    registry = CollectorRegistry()
    registry.register(FleetCollector(down))
    assert "fleet_state_up 0.0" in generate_latest(registry).decode()
