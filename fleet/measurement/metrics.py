"""Prometheus metrics per hardware class: what Flower does not export (flower#1173).

    fleet metrics --port 9808      # then scrape http://HOST:9808/metrics

Gauges, labelled by class: ``fleet_queue_depth`` (messages waiting), ``fleet_busy_steps``
(reserved or running on workers), ``fleet_workers``, ``fleet_slots``, ``fleet_cost_per_hour``
(the class's price per slot x live slots, per worker on a batching class: as routing and
run cost charge it) and ``fleet_step_seconds`` (moving average of step run time, from the
routers' online stats).

Per workflow, counted once as each run ends (in Redis, so every host's runs add up and the
counters survive a restart of this exporter), each from zero (see ``from_zero``):
``fleet_workflow_runs_total{status}``, the ``fleet_workflow_seconds`` histogram (submission
to end), ``fleet_workflow_sla_runs_total`` and ``fleet_workflow_sla_misses_total`` (runs with
an SLA, and those that ended late or failed), and ``fleet_workflow_cost_dollars_total`` (run
time x class price, summed over the steps, plus what steps spent on priced services: an LLM
endpoint's tokens at the prices of the config's ``endpoints``).
``fleet up --autoscale`` adds ``fleet_autoscale_workers`` and
``fleet_autoscale_changes_total{direction}`` per class.
The dashboard in docs/grafana/fleet.json plots them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleet.config import FleetConfig
from fleet.constants import AUTOSCALE_KEY, WORKFLOW_METRICS_KEY
from fleet.routing.state import FleetState, StateReader
from fleet.store.scripts import cumulative_buckets


class FleetCollector(Collector):
    """Reads the fleet state once per scrape (one pipelined Redis round trip)."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.reader = StateReader(cfg)
        self.shown: set[str] | None = None  # the counter fields a scrape has shown

    def from_zero(self, counters: dict[str, str]) -> dict[str, str]:
        """A counter that appears after this exporter's first scrape is shown at 0 once,
        then at its value: Prometheus counts the first increment of a new series only from
        a zero it has seen (``rate``/``increase`` otherwise drop it). The runs store makes a
        workflow's counters at 0 when its first run is submitted; this covers a run that
        ends before the next scrape. Counters there at the first scrape show their value."""
        if self.shown is None:
            self.shown = set(counters)
            return counters
        new = set(counters) - self.shown
        self.shown |= new
        return {k: "0" if k in new else v for k, v in counters.items()}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fleet_state_up", "1 if the fleet state could be read")
        try:
            state = self.reader.read()
            counters = cast(dict[str, str], self.reader.client.hgetall(WORKFLOW_METRICS_KEY))
            scaled = cast(dict[str, str], self.reader.client.hgetall(AUTOSCALE_KEY))
        except redis.RedisError:  # the scrape still answers: the backend is down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._classes(state)
        yield from workflow_families(self.from_zero(counters))
        yield from autoscale_families(scaled)

    def _classes(self, state: FleetState) -> Iterator[Metric]:
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
            "cost": GaugeMetricFamily(
                "fleet_cost_per_hour", "Price per hour of the live workers", labels=["class"]
            ),
            "seconds": GaugeMetricFamily(
                "fleet_step_seconds", "Moving average of step run time", labels=["class"]
            ),
        }
        for cls, spec in self.cfg.classes.items():
            workers = len(state.workers.get(cls, []))
            families["depth"].add_metric([cls], state.depth.get(cls, 0))
            families["busy"].add_metric([cls], state.busy(cls))
            families["workers"].add_metric([cls], workers)
            families["slots"].add_metric([cls], state.slots(cls))
            families["cost"].add_metric([cls], spec.hourly_cost(workers, state.slots(cls)))
            if f"*|{cls}|s" in state.online:
                families["seconds"].add_metric([cls], state.online[f"*|{cls}|s"])
        yield from families.values()


def workflow_families(counters: dict[str, str]) -> Iterator[Metric]:
    """Prometheus families from the per-workflow counters that runs write as they end."""
    runs = CounterMetricFamily(
        "fleet_workflow_runs", "Workflow runs ended, by status", labels=["workflow", "status"]
    )
    sla = CounterMetricFamily(
        "fleet_workflow_sla_runs", "Runs submitted with an SLA", labels=["workflow"]
    )
    miss = CounterMetricFamily(
        "fleet_workflow_sla_misses",
        "Runs with an SLA that ended late or failed",
        labels=["workflow"],
    )
    cost = CounterMetricFamily(
        "fleet_workflow_cost_dollars",
        "Step run time x class price, plus what steps spent on priced services (LLM tokens)",
        labels=["workflow"],
    )
    per_wf: dict[str, dict[str, float]] = {}
    for field, value in counters.items():
        kind, arg, wf = field.split("|", 2)
        if kind == "runs":
            runs.add_metric([wf, arg], float(value))
        elif kind in ("sla", "sla_miss", "cost"):
            {"sla": sla, "sla_miss": miss, "cost": cost}[kind].add_metric([wf], float(value))
        else:  # bin (le), sum, count: the histogram
            per_wf.setdefault(wf, {})[f"{kind}|{arg}"] = float(value)
    seconds = HistogramMetricFamily(
        "fleet_workflow_seconds", "Run time from submission to end", labels=["workflow"]
    )
    for wf, h in sorted(per_wf.items()):
        buckets = [(repr(b), n) for b, n in cumulative_buckets(h)]
        buckets.append(("+Inf", h.get("count|", 0.0)))
        seconds.add_metric([wf], buckets, sum_value=h.get("sum|", 0.0))
    yield from (runs, seconds, sla, miss, cost)


def autoscale_families(records: dict[str, str]) -> Iterator[Metric]:
    """``fleet up --autoscale``'s state: workers per class and the changes it made."""
    workers = GaugeMetricFamily(
        "fleet_autoscale_workers", "Worker processes the autoscaler keeps", labels=["class"]
    )
    changes = CounterMetricFamily(
        "fleet_autoscale_changes",
        "Workers the autoscaler added (up) or removed (down)",
        labels=["class", "direction"],
    )
    for cls, raw in sorted(records.items()):
        doc = json.loads(raw)
        workers.add_metric([cls], float(doc.get("workers", 0)))
        for direction in ("up", "down"):
            changes.add_metric([cls, direction], float(doc.get(direction, 0)))
    yield workers
    yield changes
