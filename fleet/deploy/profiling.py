"""``fleet profile``: measure ops on the live workers of every class and fit latency models.

For each op that declares representative inputs (``@op(..., samples=...)``, two sizes) and
each class that can run it and has a live worker, a one-step workflow pinned to that class
runs once to warm up (model loads are not service time), then ``reps`` times per size. The
step's run time comes from its trace (queue wait excluded); ``seconds = fixed + per_unit *
units`` is fitted by least squares; peak memory is the worker process's maximum RSS.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleet.client.client import Fleet
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.routing.state import StateReader
from fleet.sdk.registry import registry
from fleet.workflow.builder import Workflow


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


def _one(client: Fleet, op: str, cls: str, args: dict[str, Any]) -> Sample:
    wf = Workflow(f"profile-{op}")
    wf.step("step", op, classes=[cls], args=args)
    run = client.submit(wf)
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


def profile_fleet(
    client: Fleet,
    pairs: list[tuple[str, str]],
    reps: int,
    tick: Callable[[], None],
    base: ProfileStore | None = None,
) -> ProfileStore:
    store = base or ProfileStore()
    for op, cls in pairs:
        store.put(fit(op, cls, list(measure(client, op, cls, reps, tick))))
    return store


def steps_needed(pairs: list[tuple[str, str]], reps: int) -> int:
    return sum(1 + reps * len(registry.get(op).samples) for op, _ in pairs)
