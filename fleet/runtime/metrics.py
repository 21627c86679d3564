"""Prometheus metrics per hardware class: what Flower does not export (flower#1173).

    fleet metrics --port 9808      # then scrape http://HOST:9808/metrics

Gauges, labelled by class: ``fleet_queue_depth`` (messages waiting), ``fleet_busy_steps``
(reserved or running on workers), ``fleet_workers``, ``fleet_slots``, and
``fleet_step_seconds`` (moving average of step run time, from the routers' online stats).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fleet.config import FleetConfig
from fleet.routing.state import StateReader


class FleetCollector(Collector):
    """Reads the fleet state once per scrape (one pipelined Redis round trip)."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.reader = StateReader(cfg)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("fleet_state_up", "1 if the fleet state could be read")
        try:
            state = self.reader.read()
        except redis.RedisError:  # the scrape still answers: the backend is down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "depth": GaugeMetricFamily(
                "fleet_queue_depth", "Messages waiting in the class queue", labels=["class"]
            ),
            "busy": GaugeMetricFamily(
                "fleet_busy_steps", "Steps reserved or running on the class", labels=["class"]
            ),
            "workers": GaugeMetricFamily(
                "fleet_workers", "Live workers serving the class", labels=["class"]
            ),
            "slots": GaugeMetricFamily(
                "fleet_slots", "Worker slots (concurrency) of the class", labels=["class"]
            ),
            "seconds": GaugeMetricFamily(
                "fleet_step_seconds", "Moving average of step run time", labels=["class"]
            ),
        }
        for cls in self.cfg.classes:
            families["depth"].add_metric([cls], state.depth.get(cls, 0))
            families["busy"].add_metric([cls], state.busy(cls))
            families["workers"].add_metric([cls], len(state.workers.get(cls, [])))
            families["slots"].add_metric([cls], state.slots(cls))
            if f"*|{cls}|s" in state.online:
                families["seconds"].add_metric([cls], state.online[f"*|{cls}|s"])
        yield from families.values()
