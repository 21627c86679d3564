"""``fleet profile``: measure ops on the live workers of every class and fit latency models.

For each op that declares representative inputs (``@op(..., samples=...)``, two sizes) and
each class that can run it and has a live worker, a one-step workflow pinned to that class
runs once to warm up (model loads are not service time), then ``reps`` times per size. The
step's run time comes from its trace (queue wait excluded); ``seconds = fixed + per_unit *
units`` is fitted by least squares; peak memory is the worker process's maximum RSS.

On a batching class (a thread pool on an accelerator: its steps share one process, an LLM's
in one batch) the op is also measured at occupancy: k runs of its largest sample at once,
for k = 2, 4, 8 ... up to the class's slots, against one at a time. ``batch`` keeps the
throughput ratio per k, which routing reads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fleet.client.client import Fleet
from fleet.client.workflow import Workflow
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.routing.state import StateReader
from fleet.sdk.registry import registry


@dataclass(frozen=True)
class Sample:
    op: str
    cls: str
    units: float
    seconds: float
    rss_mb: float | None


def fit(op: str, cls: str, samples: list[Sample]) -> OpProfile:
    """Least-squares ``fixed + per_unit * units``; both terms kept non-negative."""
    units = np.array([s.units for s in samples])
    secs = np.array([s.seconds for s in samples])
    fixed, per_unit = float(np.median(secs)), 0.0
    if len(set(units.tolist())) > 1:
        per_unit, fixed = (float(x) for x in np.polyfit(units, secs, 1))
        if per_unit < 0:
            fixed, per_unit = float(np.median(secs)), 0.0
        fixed = max(fixed, 0.0)
    smallest = min(units)
    small = [s.seconds for s in samples if s.units == smallest]
    mem = [s.rss_mb for s in samples if s.rss_mb is not None]
    return OpProfile(
        op=op,
        cls=cls,
        fixed_s=round(fixed, 6),
        per_unit_s=round(per_unit, 8),
        unit="call" if per_unit == 0 else registry.get(op).unit,
        peak_mem_mb=round(max(mem), 1) if mem else None,
        throughput=round(1.0 / max(statistics.median(small), 1e-6), 2),
        samples=len(samples),
        measured_at=round(time.time(), 0),
    )


def plan_measurements(
    client: Fleet, ops: list[str] | None, classes: list[str] | None
) -> list[tuple[str, str]]:
    """(op, class) pairs to measure: sampled ops x eligible classes with a live worker."""
    state = StateReader(client.cfg).read()
    pairs = []
    sampled = [name for name in registry.names() if registry.get(name).samples]
    for op in ops or sampled:
        if op not in sampled:
            raise ValueError(f"no representative inputs for op '{op}' (have: {', '.join(sampled)})")
        for cls in registry.get(op).eligible(client.cfg.classes):
            if state.live(cls) and (not classes or cls in classes):
                pairs.append((op, cls))
    return pairs


def _workflow(op: str, cls: str, args: dict[str, Any]) -> Workflow:
    wf = Workflow(f"profile-{op}")
    wf.step("step", op, classes=[cls], args=args)
    return wf


def _one(client: Fleet, op: str, cls: str, args: dict[str, Any]) -> Sample:
    run = client.submit(_workflow(op, cls, args))
    run.get(timeout=600)
    (entry,) = [e for e in run.trace() if e.status == "succeeded"]
    return Sample(op, cls, registry.units_of(op, args), entry.run_s, entry.rss_mb)


def measure(
    client: Fleet, op: str, cls: str, reps: int, tick: Callable[[], None]
) -> Iterator[Sample]:
    samples = registry.get(op).samples
    _one(client, op, cls, samples[0])  # warm-up: loads models, fills caches
    tick()
    for args in samples:
        for _ in range(reps):
            yield _one(client, op, cls, args)
            tick()


def batch_levels(slots: int) -> list[int]:
    """Occupancies measured on a batching class of ``slots``: 2, 4, 8 ... and ``slots``."""
    levels, k = [], 2
    while k < slots:
        levels.append(k)
        k *= 2
    return [*levels, slots] if slots > 1 else []


def measure_batch(
    client: Fleet, op: str, cls: str, slots: int, reps: int, tick: Callable[[], None]
) -> dict[str, float]:
    """Throughput at k runs at once over one at a time (wall time, submission to the last
    result; the median of ``reps`` rounds per level)."""
    wf = _workflow(op, cls, registry.get(op).samples[-1])

    def wall(k: int) -> float:
        start = time.perf_counter()
        for run in [client.submit(wf) for _ in range(k)]:
            run.get(timeout=600)
        tick()
        return time.perf_counter() - start

    rounds = max(reps, 1)
    alone = statistics.median(wall(1) for _ in range(rounds))
    return {
        str(k): round(k * alone / statistics.median(wall(k) for _ in range(rounds)), 3)
        for k in batch_levels(slots)
    }


def profile_fleet(
    client: Fleet,
    pairs: list[tuple[str, str]],
    reps: int,
    tick: Callable[[], None],
    base: ProfileStore | None = None,
) -> ProfileStore:
    store = base or ProfileStore()
    for op, cls in pairs:
        profile = fit(op, cls, list(measure(client, op, cls, reps, tick)))
        spec = client.cfg.classes[cls]
        if spec.batches:
            batch = measure_batch(client, op, cls, spec.concurrency, reps, tick)
            profile = replace(profile, batch=batch)
        store.put(profile)
    return store


def steps_needed(
    pairs: list[tuple[str, str]], reps: int, batching: dict[str, int] | None = None
) -> int:
    """Progress ticks: a run per sample and rep, plus a round per level and rep on the
    batching classes (``batching``: class -> slots)."""
    total = sum(1 + reps * len(registry.get(op).samples) for op, _ in pairs)
    for _, cls in pairs:
        if batching and cls in batching:
            total += max(reps, 1) * (1 + len(batch_levels(batching[cls])))
    return total
