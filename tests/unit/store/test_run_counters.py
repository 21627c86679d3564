"""The per-workflow counters a run's end writes (``fleet metrics``, ``fleet plan --check``),
on a real Redis: each run counted in its own latency bucket once, read back cumulative, with
the cumulative counters earlier fleets wrote added in."""

from __future__ import annotations

import time
import uuid

import redis

from fleet.constants import LATENCY_BUCKETS, WORKFLOW_METRICS_KEY
from fleet.measurement.metrics import workflow_families
from fleet.store.runs import RunStore
from fleet.store.scripts import cumulative_buckets


def _end_after(store: RunStore, workflow: str, seconds: float) -> None:
    run_id = uuid.uuid4().hex
    store.create(run_id, workflow, {}, {"t": "x"}, spec="digest")
    store.redis.hset(store._key(run_id), "submitted_at", repr(time.time() - seconds))
    assert store.succeed(run_id, {"out": 1})


def test_a_run_is_counted_in_its_own_bucket_and_read_back_cumulative(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    wf = f"hist-{uuid.uuid4().hex[:8]}"
    for seconds in (0.0, 0.2, 0.2, 7.0, 400.0):  # 400 s: beyond the last bound
        _end_after(store, wf, seconds)
    raw = {k: float(v) for k, v in store.redis.hgetall(WORKFLOW_METRICS_KEY).items()}
    mine = {k.rsplit("|", 1)[0]: v for k, v in raw.items() if k.endswith(f"|{wf}")}
    bins = {k: v for k, v in mine.items() if k.startswith("bin|") and v}
    assert bins == {"bin|0.05": 1, "bin|0.25": 2, "bin|10.0": 1}
    cumulative = dict(cumulative_buckets(mine))
    assert [cumulative[b] for b in (0.05, 0.1, 0.25, 5.0, 10.0, 300.0)] == [1, 1, 3, 3, 4, 4]
    assert mine["count|"] == 5

    # what a fleet before this one wrote (cumulative) is added in
    legacy = {f"le|{b!r}": 2.0 for b in LATENCY_BUCKETS}
    assert dict(cumulative_buckets({**mine, **legacy}))[0.05] == 3


def test_prometheus_reads_the_histogram_cumulative(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    wf = f"prom-{uuid.uuid4().hex[:8]}"
    for seconds in (0.0, 0.2, 3.0):
        _end_after(store, wf, seconds)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counters = {k: v for k, v in client.hgetall(WORKFLOW_METRICS_KEY).items() if k.endswith(wf)}
    (seconds,) = [f for f in workflow_families(counters) if f.name == "fleet_workflow_seconds"]
    buckets = {s.labels["le"]: s.value for s in seconds.samples if s.name.endswith("_bucket")}
    assert (buckets["0.05"], buckets["0.25"], buckets["2.5"], buckets["5.0"]) == (1, 2, 2, 3)
    assert buckets["+Inf"] == 3
