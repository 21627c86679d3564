"""Hold a running fleet to its plan: ``fleet plan --check PLAN``.

Over a window, the check reads what the fleet did -- each workflow's runs (rate) and run times
(p95, from the per-workflow histogram every ending run adds to), each class's busy slots
(utilisation, sampled every second) -- and compares it with what the plan predicted
(``[predicted]`` in the plan file). It says what drifted:

- a workflow's **rate** more than ``tolerance`` off the planned rate (the plan was sized for
  another load);
- its **p95** over its SLA (late), or over the planned p95 by more than ``tolerance``;
- a class's **utilisation** more than ``tolerance`` (absolute) above the plan's (too few
  workers for what it serves), or below it (paid for and idle).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fleet.config import FleetConfig, PlanPrediction
from fleet.constants import WORKFLOW_METRICS_KEY
from fleet.routing.state import StateReader
from fleet.store.scripts import cumulative_buckets


@dataclass(frozen=True)
class Observed:
    seconds: float  # the window
    runs: dict[str, float] = field(default_factory=dict)  # workflow -> runs ended in it
    p95_s: dict[str, float | None] = field(default_factory=dict)
    utilisation: dict[str, float] = field(default_factory=dict)  # class -> mean busy/slots

    def rate(self, workflow: str) -> float:
        return self.runs.get(workflow, 0.0) / self.seconds


def quantile(q: float, buckets: list[tuple[float, float]], count: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound, count <= bound), linear
    within its bucket as Prometheus's histogram_quantile; None without observations; the
    largest bound when it lies beyond."""
    if count <= 0:
        return None
    rank, below, lower = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            inside = cumulative - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return lower + (bound - lower) * share
        below, lower = cumulative, bound
    return buckets[-1][0] if buckets else None


def _histograms(raw: Any) -> dict[str, dict[str, float]]:
    """Per workflow, the histogram counters (``bin|bound``, ``le|bound``, ``count|``)."""
    found: dict[str, dict[str, float]] = {}
    for name, value in cast(dict[str, str], raw).items():
        kind, arg, wf = name.split("|", 2)
        if kind in ("bin", "le", "count"):
            found.setdefault(wf, {})[f"{kind}|{arg}"] = float(value)
    return found


def observe(
    cfg: FleetConfig, seconds: float, tick: Callable[[float], None] = time.sleep
) -> Observed:
    """Watch the fleet for ``seconds``: runs ended, their p95, each class's utilisation."""
    if not 0 < seconds < math.inf:  # nan too: a window that never ends
        raise ValueError(f"the window must be a number of seconds above 0, not {seconds}")
    reader = StateReader(cfg)
    before = _histograms(reader.client.hgetall(WORKFLOW_METRICS_KEY))
    start = time.monotonic()
    busy: dict[str, list[float]] = {c: [] for c in cfg.classes}
    while True:
        state = reader.read()
        for cls in cfg.classes:
            slots = state.slots(cls)
            if slots:
                busy[cls].append(min(1.0, state.busy(cls) / slots))
        if time.monotonic() - start >= seconds:
            break
        tick(min(1.0, max(0.0, seconds - (time.monotonic() - start))))
    after = _histograms(reader.client.hgetall(WORKFLOW_METRICS_KEY))
    elapsed = max(1e-9, time.monotonic() - start)
    runs, p95 = {}, {}
    for wf, h in after.items():
        old = before.get(wf, {})
        count = h.get("count|", 0.0) - old.get("count|", 0.0)
        was = dict(cumulative_buckets(old))
        buckets = [(b, n - was[b]) for b, n in cumulative_buckets(h)]
        runs[wf], p95[wf] = count, quantile(0.95, buckets, count)
    used = {c: statistics.fmean(v) for c, v in busy.items() if v}
    return Observed(elapsed, runs, p95, used)


@dataclass(frozen=True)
class Finding:
    subject: str  # "workflow ask", "class fast"
    what: str  # "rate", "p95", "utilisation"
    planned: float | None
    observed: float | None
    drifted: bool
    why: str


def compare(predicted: PlanPrediction, seen: Observed, tolerance: float = 0.25) -> list[Finding]:
    """Every figure the plan predicted, next to what the fleet did, and whether it drifted."""
    found = []
    for wf, plan in predicted.workflows.items():
        subject = f"workflow {wf}"
        if "rate" in plan:
            rate, want = seen.rate(wf), plan["rate"]
            off = not abs(rate - want) <= tolerance * want  # a nan planned: drifted
            why = f"{rate:.2f}/s against {want:g}/s planned" if off else "as planned"
            found.append(Finding(subject, "rate", want, rate, off, why))
        p95 = seen.p95_s.get(wf)
        if p95 is None:
            found.append(Finding(subject, "p95", plan.get("p95_s"), None, False, "no runs ended"))
            continue
        sla, planned = plan.get("sla_s"), plan.get("p95_s")
        late = sla is not None and not p95 <= sla
        slower = planned is not None and not p95 <= planned * (1 + tolerance)
        why = (
            f"{p95:.3f} s is over its SLA {sla:g} s"
            if late
            else f"{p95:.3f} s against {planned or 0:.3f} s planned"
            if slower
            else "as planned"
        )
        found.append(Finding(subject, "p95", planned, p95, late or slower, why))
    for cls, want in predicted.classes.items():
        used = seen.utilisation.get(cls)
        if used is None:
            found.append(Finding(f"class {cls}", "utilisation", want, None, True, "no live worker"))
            continue
        off = not abs(used - want) <= tolerance
        why = (
            f"{used:.2f} busy against {want:.2f} planned"
            + (": too few workers" if used > want else ": idle capacity")
            if off
            else "as planned"
        )
        found.append(Finding(f"class {cls}", "utilisation", want, used, off, why))
    return found
