"""The planner's mixed-integer program (the placement problem of docs/planning.md), solved by
HiGHS (``scipy.optimize.milp``):

- x[f,s,j] in {0,1}: step s of workflow f runs on class j (only where the catalogue has a
  latency for the op on j, and the workflow's data may go there); sum_j x[f,s,j] = 1;
- n[j] >= 0 integer: workers of each class priced by the hour;
- capacity: sum_{f,s} rate_f t[s,j] x[f,s,j] <= ceiling_j slots_j n[j] (a class priced by the
  unit: <= ceiling_j capacity_j, or no row when its capacity is unbounded);
- data movement m[f,e] >= (bytes_e / network_j + hop) (x[f,a,j] - x[f,b,j]) for each edge a->b:
  paid only where producer and consumer run on different classes (the KV handover of a
  prefill -> decode split, most of all); where the producer's class charges for data leaving
  it, d[f,e] >= bytes_e / 1e9 x egress_j (x[f,a,j] - x[f,b,j]) dollars per run;
- latency: for every source-to-sink path of f, sum of service + movement <= budget_f: a hard
  constraint. Only with a price for violating it (``violation_price``, $/h per second over)
  may a path exceed its budget by slack_f, and the objective pays for it;
- minimise, in $/h: sum_j price_j n[j] + the per-unit charges (rate x $ per step) + the
  egress charges (+ violation_price sum_f slack_f).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.workload import WorkflowLoad

Row = tuple[dict[int, float], float, float]


class _Index:
    """Column numbers of the program's variables."""

    def __init__(self) -> None:
        self.n = 0
        self.cols: dict[tuple[Any, ...], int] = {}

    def add(self, key: tuple[Any, ...]) -> int:
        self.cols[key] = self.n
        self.n += 1
        return self.n - 1


def eligible(cat: Catalogue, flow: WorkflowLoad, op: str) -> list[str]:
    out = []
    for name, dev in cat.devices.items():
        if cat.latency(name, op, flow.kind) is None:
            continue
        if flow.sensitivity and flow.sensitivity not in dev.trusted_for:
            continue
        out.append(name)
    return out


@dataclass(frozen=True)
class Solution:
    workers: dict[str, int]  # per class priced by the hour
    placement: dict[str, dict[str, str]]  # flow -> step path -> device
    slack: dict[str, float]  # flow -> seconds over its budget (only with a violation price)


class Program:
    """The mixed-integer program's variables, objective and rows, built from the workload."""

    def __init__(
        self,
        flows: list[WorkflowLoad],
        cat: Catalogue,
        ceiling: dict[str, float],
        scale: dict[str, float],
        violation_price: float | None = None,
    ) -> None:
        self.flows, self.cat, self.ceiling, self.scale = flows, cat, ceiling, scale
        self.violation_price = violation_price
        self.idx = _Index()
        self.times: dict[tuple[str, str, str], float] = {}
        self.prices: dict[tuple[str, str, str], float] = {}  # $ per step, per-unit classes
        self.chance: dict[tuple[str, str], float] = {}  # how often a step runs, per run
        self.rows: list[Row] = []
        self.egress = any(d.egress_per_gb > 0 for d in cat.devices.values())
        self._variables()

    def _variables(self) -> None:
        for f in self.flows:
            for s in f.steps():
                options = eligible(self.cat, f, s.op)
                if not options:
                    why = "no device has a latency figure for it"
                    if f.kind is not None:
                        why += f" for requests of kind '{f.kind}'"
                    if f.sensitivity:
                        why += f" among those trusted for '{f.sensitivity}'"
                    raise ConfigError(f"workflow '{f.name}', step '{s.path}' ({s.op}): {why}")
                for j in options:
                    t = self.cat.step_time(j, s.op, s.units, f.kind)
                    assert t is not None
                    self.times[(f.name, s.path, j)] = t
                    self.prices[(f.name, s.path, j)] = self.cat.devices[j].step_price(s.op, s.units)
                    self.chance[(f.name, s.path)] = s.chance
                    self.idx.add(("x", f.name, s.path, j))
        for j in self.cat.owned():
            self.idx.add(("n", j))
        for f in self.flows:
            for a, b in f.graph.edges:
                self.idx.add(("m", f.name, a, b))
                if self.egress:
                    self.idx.add(("d", f.name, a, b))
            self.idx.add(("slack", f.name))

    def col(self, *key: Any) -> int | None:
        return self.idx.cols.get(key)

    def objective(self) -> Any:
        cost = np.zeros(self.idx.n)
        for j in self.cat.owned():
            cost[self.idx.cols[("n", j)]] = self.cat.devices[j].price_per_hour
        rates = {f.name: f.rate for f in self.flows}
        for f in self.flows:
            cost[self.idx.cols[("slack", f.name)]] = self.violation_price or 0.0
            if self.egress:  # $ per run on the edge, as often as its consumer runs
                for a, b in f.graph.edges:
                    runs = f.rate * self.chance[(f.name, b)] * 3600
                    cost[self.idx.cols[("d", f.name, a, b)]] = runs
        for (fn, path, j), t in self.times.items():
            runs = rates[fn] * self.chance[(fn, path)]
            cost[self.idx.cols[("x", fn, path, j)]] += runs * 3600 * self.prices[(fn, path, j)]
            # a tie-breaker: the cheaper busy time
            busy = runs * t * self.cat.devices[j].price_per_hour
            cost[self.idx.cols[("x", fn, path, j)]] += 1e-4 * busy + 1e-9
        return cost

    def assignment(self) -> None:
        seen: dict[tuple[str, str], dict[int, float]] = {}
        for k, c in self.idx.cols.items():
            if k[0] == "x":
                seen.setdefault((k[1], k[2]), {})[c] = 1.0
        self.rows += [(cols, 1.0, 1.0) for cols in seen.values()]

    def capacity(self) -> None:
        rates = {f.name: f.rate for f in self.flows}
        for j, d in self.cat.devices.items():
            if d.per_unit and d.capacity is None:
                continue  # elastic: as many at once as the load needs
            row: dict[int, float] = {}
            for (fn, path, jj), t in self.times.items():
                if jj == j:  # a conditional step loads its class as often as it runs
                    row[self.idx.cols[("x", fn, path, j)]] = rates[fn] * self.chance[(fn, path)] * t
            if d.per_unit:
                assert d.capacity is not None
                self.rows.append((row, -np.inf, self.ceiling[j] * d.capacity))
            else:
                row[self.idx.cols[("n", j)]] = -self.ceiling[j] * d.slots
                self.rows.append((row, -np.inf, 0.0))

    def movement(self) -> None:
        for f in self.flows:
            for a, b, data in f.graph.edges(data=True):
                size = data.get("bytes", 0)
                for j, d in self.cat.devices.items():
                    time = size / (d.network_gbs * 1e9) + self.cat.hop_s
                    self._leaving(f, a, b, j, ("m", f.name, a, b), time)
                    if self.egress and d.egress_per_gb > 0:
                        self._leaving(f, a, b, j, ("d", f.name, a, b), size / 1e9 * d.egress_per_gb)

    def _leaving(
        self, f: WorkflowLoad, a: str, b: str, j: str, var: tuple[str, ...], v: float
    ) -> None:
        """var >= v when a runs on j and b does not (the data leaves j)."""
        row = {self.idx.cols[var]: -1.0}
        if (ca := self.col("x", f.name, a, j)) is not None:
            row[ca] = v
        if (cb := self.col("x", f.name, b, j)) is not None:
            row[cb] = -v
        if len(row) > 1:
            self.rows.append((row, -np.inf, 0.0))

    def latency(self) -> None:
        by_step: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for (fn, path, j), t in self.times.items():
            by_step.setdefault((fn, path), []).append((self.idx.cols[("x", fn, path, j)], t))
        for f in self.flows:
            budget = f.sla_s * self.scale[f.name]
            for route in f.paths():
                row = {self.idx.cols[("slack", f.name)]: -1.0}
                for name in route:
                    row.update(dict(by_step[(f.name, name)]))
                for a, b in itertools.pairwise(route):
                    row[self.idx.cols[("m", f.name, a, b)]] = 1.0
                self.rows.append((row, -np.inf, budget))

    def run(self) -> Any:
        self.assignment()
        self.capacity()
        self.movement()
        self.latency()
        matrix = np.zeros((len(self.rows), self.idx.n))
        lower, upper = np.empty(len(self.rows)), np.empty(len(self.rows))
        for r, (cols, lo, hi) in enumerate(self.rows):
            for c, v in cols.items():
                matrix[r, c] = v
            lower[r], upper[r] = lo, hi
        keys = list(self.idx.cols)
        integrality = np.array([1 if k[0] in ("x", "n") else 0 for k in keys])
        slack_hi = np.inf if self.violation_price is not None else 0.0  # hard unless priced
        hi_b = np.array(
            [1.0 if k[0] == "x" else slack_hi if k[0] == "slack" else np.inf for k in keys]
        )
        return milp(
            self.objective(),
            constraints=[LinearConstraint(matrix, lower, upper)],
            integrality=integrality,
            bounds=Bounds(np.zeros(self.idx.n), hi_b),
            options={"time_limit": 60},
        )


def solve(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    ceiling: dict[str, float],
    scale: dict[str, float],
    violation_price: float | None = None,
) -> Solution | None:
    """Workers, placement and slack per workflow; None when the budgets cannot all be met."""
    program = Program(flows, cat, ceiling, scale, violation_price)
    idx = program.idx
    res = program.run()
    if res.x is None:
        if res.status == 2:  # infeasible: some service budget is out of reach
            return None
        if res.status == 1:  # the time or iteration limit
            raise ConfigError(
                "the planning program found no fleet within its 60 s limit: "
                "plan fewer workflows or devices at once"
            )
        raise ConfigError(  # unbounded or numerically broken: figures out of their ranges
            "the planning program has no usable solution: check that the catalogue's "
            "prices and times are numbers of a sensible size"
        )
    x = res.x
    workers = {j: round(x[idx.cols[("n", j)]]) for j in cat.owned()}
    placement: dict[str, dict[str, str]] = {f.name: {} for f in flows}
    for k, c in idx.cols.items():
        if k[0] == "x" and x[c] > 0.5:
            placement[k[1]][k[2]] = k[3]
    slack = {f.name: float(x[idx.cols[("slack", f.name)]]) for f in flows}
    return Solution(workers, placement, slack)
