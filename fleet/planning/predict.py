"""A fleet and placement's cost and queueing-predicted latency (M/G/c, Allen-Cunneen: see
:mod:`fleet.planning.queueing`): the check every candidate plan passes, and what `fleet plan`
reports."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from fleet.planning.catalogue import Catalogue
from fleet.planning.queueing import NO_WAIT, Wait, erlang_c, mixed_cv, quantiles
from fleet.planning.workload import WorkflowLoad

SECONDS_PER_HOUR = 3600.0
TOLERANCE_S = 1e-9  # a prediction this close to its SLA meets it (the solver's rounding)


@dataclass
class Plan:
    workers: dict[str, int]  # per class priced by the hour (0 for the per-unit classes)
    placement: dict[str, dict[str, str]]  # flow -> step path -> device
    cost_per_hour: float  # all of it: owned classes, per-unit charges and egress at the rates
    utilisation: dict[str, float]
    predicted: dict[str, dict[str, float]]  # flow -> p50_s (median), mean_s, p95_s, sla_s
    budgets: dict[str, dict[str, float]]  # flow -> step -> latency budget (s)
    notes: list[str] = field(default_factory=list)
    # $/h by kind: "owned" (workers x price/h), "per_unit" (calls and units), "egress"
    costs: dict[str, float] = field(default_factory=dict)
    cost_per_request: float = 0.0  # cost_per_hour over the runs an hour brings
    unit_costs: dict[str, float] = field(default_factory=dict)  # $/h per per-unit class

    def used(self) -> list[str]:
        """The classes the plan runs: owned ones with workers, per-unit ones it places on."""
        placed = {j for steps in self.placement.values() for j in steps.values()}
        return [j for j in self.utilisation if self.workers.get(j) or j in placed]

    def late(self, flows: list[WorkflowLoad]) -> list[WorkflowLoad]:
        return [f for f in flows if self.predicted[f.name]["p95_s"] > f.sla_s + TOLERANCE_S]


def _waits(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
) -> tuple[dict[tuple[str, str], tuple[float, float]], dict[str, Wait]]:
    """Each step's service time and its coefficient of variation; each class's wait."""
    load: dict[str, list[tuple[float, float, float]]] = {j: [] for j in cat.devices}
    step_time: dict[tuple[str, str], tuple[float, float]] = {}
    for f in flows:
        for s in f.steps():
            j = placement[f.name][s.path]
            t = cat.step_time(j, s.op, s.units, f.kind)
            assert t is not None
            cv = cat.cv(j, s.op, f.kind)
            step_time[(f.name, s.path)] = (t, cv)
            load[j].append((f.rate * s.chance, t, cv))  # (rate, time, cv)
    waits = {}
    for j, items in load.items():
        rate = sum(r for r, _, _ in items)
        mean = sum(r * t for r, t, _ in items) / rate if rate else 0.0
        d = cat.devices[j]
        if d.per_unit and d.capacity is None:
            waits[j] = NO_WAIT  # elastic: a step never waits for a slot
            continue
        servers = d.capacity if d.per_unit and d.capacity else workers.get(j, 0) * d.slots
        waits[j] = erlang_c(rate, mean, servers, mixed_cv(items))
    return step_time, waits


def costs(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
) -> tuple[dict[str, float], dict[str, float]]:
    """$/h of a fleet and placement at the workload's rates, by kind ("owned", "per_unit",
    "egress"), and of each class priced by the unit."""
    owned = sum(cat.devices[j].price_per_hour * n for j, n in workers.items())
    egress = 0.0
    per_class: dict[str, float] = {}
    for f in flows:
        chance = {s.path: s.chance for s in f.steps()}
        for s in f.steps():
            j = placement[f.name][s.path]
            if cat.devices[j].per_unit:
                price = f.rate * s.chance * cat.devices[j].step_price(s.op, s.units)
                per_class[j] = per_class.get(j, 0.0) + price * SECONDS_PER_HOUR
        for a, b, data in f.graph.edges(data=True):
            ja, jb = placement[f.name][a], placement[f.name][b]
            if ja != jb:
                gb = data.get("bytes", 0) / 1e9
                egress += f.rate * chance[b] * gb * cat.devices[ja].egress_per_gb
    kinds = {"owned": owned, "per_unit": sum(per_class.values()), "egress": egress * 3600}
    return kinds, per_class


def predict(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
) -> Plan:
    """Cost, utilisation and the queueing-predicted median, mean and p95 of each workflow's
    latency (its slowest path's) for a given fleet and placement."""
    step_time, waits = _waits(flows, cat, workers, placement)
    predicted, budgets = {}, {}
    for f in flows:
        best = {"p50_s": 0.0, "mean_s": 0.0, "p95_s": 0.0}
        for path in f.paths():
            fixed = mean = var = 0.0
            visits: dict[str, int] = {}
            for a in path:
                j = placement[f.name][a]
                t, cv = step_time[(f.name, a)]
                if cv > 0:
                    mean, var = mean + t, var + (cv * t) ** 2
                else:
                    fixed += t
                mean += waits[j].mean_s
                visits[j] = visits.get(j, 0) + 1
            # a path's waits at one class go together (the same busy spell): their spreads add
            var += sum(k * k * waits[j].var_s for j, k in visits.items())
            for a, b in itertools.pairwise(path):
                ja, jb = placement[f.name][a], placement[f.name][b]
                if ja != jb:
                    size = f.graph.edges[a, b].get("bytes", 0)
                    fixed += size / (cat.devices[ja].network_gbs * 1e9) + cat.hop_s
            p50, p95 = quantiles(fixed, mean, var)
            for key, value in (("p50_s", p50), ("mean_s", fixed + mean), ("p95_s", p95)):
                best[key] = max(best[key], value)
        predicted[f.name] = {**best, "sla_s": f.sla_s}
        total = sum(step_time[(f.name, s.path)][0] for s in f.steps()) or 1.0
        budgets[f.name] = {
            s.path: round(f.sla_s * step_time[(f.name, s.path)][0] / total, 4) for s in f.steps()
        }
    kinds, per_class = costs(flows, cat, workers, placement)
    total_cost = sum(kinds.values())
    runs_per_hour = sum(f.rate for f in flows) * SECONDS_PER_HOUR
    util = {j: w.utilisation for j, w in waits.items()}
    return Plan(
        dict(workers),
        placement,
        total_cost,
        util,
        predicted,
        budgets,
        costs=kinds,
        cost_per_request=total_cost / runs_per_hour if runs_per_hour else 0.0,
        unit_costs=per_class,
    )
