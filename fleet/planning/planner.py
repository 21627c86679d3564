"""`fleet plan`: how many workers of each device class, and which class runs each step of each
workflow, at the lowest cost per hour that meets every workflow's p95 SLA.

The placement problem (docs/hardware.md), solved as a mixed-integer program by HiGHS
(``scipy.optimize.milp``):

- x[f,s,j] in {0,1}: step s of workflow f runs on class j (only where the catalogue has a
  latency for the op on j, and the workflow's data may go there); sum_j x[f,s,j] = 1;
- n[j] >= 0 integer: workers of class j;
- capacity: sum_{f,s} rate_f t[s,j] x[f,s,j] <= ceiling_j slots_j n[j];
- data movement m[f,e] >= (bytes_e / network_j) (x[f,a,j] - x[f,b,j]) for each edge a->b:
  paid only where producer and consumer run on different classes (the KV handover of a
  prefill -> decode split, most of all);
- latency: for every source-to-sink path of f, sum of service + movement <= budget_f: a hard
  constraint. Only with a price for violating it (``violation_price``, $/h per second over)
  may a path exceed its budget by slack_f, and the objective pays for it;
- minimise sum_j price_j n[j] (+ violation_price sum_f slack_f).

The plan is then checked with M/M/c queueing estimates (:mod:`fleet.planning.queueing`).
Where a workflow's predicted p95 misses its SLA, capacity is added to the classes on its
paths until the prediction meets it (a candidate), and the program is solved again with a
tighter service budget (another candidate, possibly cheaper); the cheapest candidate wins.
When nothing can meet an SLA, the error names the workflow and the best p95 it can get.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.queueing import erlang_c
from fleet.planning.workload import WorkflowLoad

HOP_S = 0.0005  # one network hop between classes
MAX_ROUNDS = 8
PROBE_PRICE = 1e4  # $/h per second: only to find how far an impossible SLA is out of reach
GROW_PATIENCE = 50  # rounds of adding workers without a better p95 before giving up


@dataclass
class Plan:
    workers: dict[str, int]
    placement: dict[str, dict[str, str]]  # flow -> step path -> device
    cost_per_hour: float
    utilisation: dict[str, float]
    predicted: dict[str, dict[str, float]]  # flow -> p50_s, p95_s, sla_s
    budgets: dict[str, dict[str, float]]  # flow -> step -> latency budget (s)
    notes: list[str] = field(default_factory=list)


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
        if cat.latency(name, op) is None:
            continue
        if flow.sensitivity and flow.sensitivity not in dev.trusted_for:
            continue
        out.append(name)
    return out


Row = tuple[dict[int, float], float, float]


class _Program:
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
        self.chance: dict[tuple[str, str], float] = {}  # how often a step runs, per run
        self.rows: list[Row] = []
        self._variables()

    def _variables(self) -> None:
        for f in self.flows:
            for s in f.steps():
                options = eligible(self.cat, f, s.op)
                if not options:
                    why = "no device has a latency figure for it"
                    if f.sensitivity:
                        why += f" among those trusted for '{f.sensitivity}'"
                    raise ConfigError(f"workflow '{f.name}', step '{s.path}' ({s.op}): {why}")
                for j in options:
                    model = self.cat.latency(j, s.op)
                    assert model is not None
                    self.times[(f.name, s.path, j)] = model.time(s.units)
                    self.chance[(f.name, s.path)] = s.chance
                    self.idx.add(("x", f.name, s.path, j))
        for j in self.cat.devices:
            self.idx.add(("n", j))
        for f in self.flows:
            for a, b in f.graph.edges:
                self.idx.add(("m", f.name, a, b))
            self.idx.add(("slack", f.name))

    def col(self, *key: Any) -> int | None:
        return self.idx.cols.get(key)

    def objective(self) -> Any:
        cost = np.zeros(self.idx.n)
        for j, d in self.cat.devices.items():
            cost[self.idx.cols[("n", j)]] = d.price_per_hour
        rates = {f.name: f.rate for f in self.flows}
        for f in self.flows:
            cost[self.idx.cols[("slack", f.name)]] = self.violation_price or 0.0
        for (fn, path, j), t in self.times.items():  # a tie-breaker: the cheaper busy time
            busy = rates[fn] * self.chance[(fn, path)] * t * self.cat.devices[j].price_per_hour
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
            row: dict[int, float] = {self.idx.cols[("n", j)]: -self.ceiling[j] * d.slots}
            for (fn, path, jj), t in self.times.items():
                if jj == j:  # a conditional step loads its class as often as it runs
                    row[self.idx.cols[("x", fn, path, j)]] = rates[fn] * self.chance[(fn, path)] * t
            self.rows.append((row, -np.inf, 0.0))

    def movement(self) -> None:
        for f in self.flows:
            for a, b, data in f.graph.edges(data=True):
                m = self.idx.cols[("m", f.name, a, b)]
                for j, d in self.cat.devices.items():
                    move = data.get("bytes", 0) / (d.network_gbs * 1e9) + HOP_S
                    row = {m: -1.0}
                    if (ca := self.col("x", f.name, a, j)) is not None:
                        row[ca] = move
                    if (cb := self.col("x", f.name, b, j)) is not None:
                        row[cb] = -move
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

    def solve(self) -> Any:
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


Solution = tuple[dict[str, int], dict[str, dict[str, str]], dict[str, float]]


def _solve_once(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    ceiling: dict[str, float],
    scale: dict[str, float],
    violation_price: float | None = None,
) -> Solution | None:
    """Workers, placement and slack per workflow; None when the budgets cannot all be met."""
    program = _Program(flows, cat, ceiling, scale, violation_price)
    idx = program.idx
    res = program.solve()
    if res.x is None:
        if res.status == 2:  # infeasible: some service budget is out of reach
            return None
        raise ConfigError(f"the planning program has no solution: {res.message}")
    x = res.x
    workers = {j: round(x[idx.cols[("n", j)]]) for j in cat.devices}
    placement: dict[str, dict[str, str]] = {f.name: {} for f in flows}
    for k, c in idx.cols.items():
        if k[0] == "x" and x[c] > 0.5:
            placement[k[1]][k[2]] = k[3]
    slack = {f.name: float(x[idx.cols[("slack", f.name)]]) for f in flows}
    return workers, placement, slack


def plan(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    ceiling: float = 0.7,
    violation_price: float | None = None,
) -> Plan:
    """The cheapest fleet and placement whose predicted p95 meets every SLA.

    The SLA is hard. With ``violation_price`` ($/h for each second a workflow's p95 is over
    its SLA) a cheaper fleet that misses an SLA wins when its price plus that penalty is
    lower; its notes say by how much each workflow is over."""
    ceilings = {j: d.ceiling or ceiling for j, d in cat.devices.items()}
    try:
        hard: Plan | None = _hard(flows, cat, ceilings)
    except ConfigError:
        if violation_price is None:
            raise
        hard = None
    if violation_price is None:
        assert hard is not None
        return hard
    candidates = [hard] if hard is not None else []
    scale = {f.name: 1.0 for f in flows}
    solved = _solve_once(flows, cat, ceilings, scale, violation_price)
    if solved is not None:
        candidates.append(predict(flows, cat, solved[0], solved[1]))

    def overage(p: Plan) -> float:
        return sum(max(0.0, p.predicted[f.name]["p95_s"] - f.sla_s) for f in flows)

    best = min(candidates, key=lambda p: p.cost_per_hour + violation_price * overage(p))
    if best is not hard:
        best.notes = list(hard.notes) if hard else []
        for f in flows:
            over = best.predicted[f.name]["p95_s"] - f.sla_s
            if over > 1e-9:
                best.notes.append(
                    f"{f.name}: p95 {best.predicted[f.name]['p95_s']:.3f} s, {over:.3f} s over "
                    f"its SLA, paid at {violation_price:g} $/h per second"
                )
        if hard is not None:
            best.notes.append(f"meeting every SLA would cost {hard.cost_per_hour:.3f} $/h")
    return best


def _hard(flows: list[WorkflowLoad], cat: Catalogue, ceilings: dict[str, float]) -> Plan:
    """The cheapest plan meeting every SLA (service time in the program, queueing checked)."""
    scale = {f.name: 1.0 for f in flows}
    notes: list[str] = []
    candidates: list[Plan] = []
    seen: list[tuple[dict[str, int], dict[str, dict[str, str]]]] = []
    for _ in range(MAX_ROUNDS):
        solved = _solve_once(flows, cat, ceilings, scale)
        if solved is None:
            break  # a tighter budget is out of reach: keep what was found
        workers, placement, _ = solved
        if (workers, placement) in seen:
            scale = {name: s * 0.8 for name, s in scale.items()}
            continue  # the same fleet again: tighten further without checking it twice
        seen.append((workers, placement))
        result = predict(flows, cat, workers, placement)
        late = [f for f in flows if result.predicted[f.name]["p95_s"] > f.sla_s]
        if not late:
            candidates.append(result)
            break
        notes.append(
            "queueing check: "
            + ", ".join(f"{f.name} p95 {result.predicted[f.name]['p95_s']:.3f} s" for f in late)
            + " over the SLA; more workers, and a tighter service budget, tried"
        )
        grown = _grow(flows, cat, workers, placement, {f.name: f.sla_s for f in flows})
        if grown is not None:
            candidates.append(grown)
        for f in late:  # leave more of the SLA to queueing: a tighter service budget
            scale[f.name] *= 0.8
        for j, u in result.utilisation.items():
            ceilings[j] = min(ceilings[j], max(0.3, u * 0.85)) if u > 0.5 else ceilings[j]
    if not candidates:
        raise ConfigError(_out_of_reach(flows, cat, ceilings))
    best = min(candidates, key=lambda p: p.cost_per_hour)
    if len(candidates) > 1:
        notes.append(f"{len(candidates)} fleets met the queueing check; the cheapest is kept")
    best.notes = notes
    return best


def _grow(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
    allowed: dict[str, float],
) -> Plan | None:
    """The placement with workers added, busiest class of a late workflow first, until every
    predicted p95 is within ``allowed``; None when more workers stop helping."""
    workers = dict(workers)
    best, stuck = math.inf, 0
    while stuck < GROW_PATIENCE:
        result = predict(flows, cat, workers, placement)
        late = {f.name: result.predicted[f.name]["p95_s"] - allowed[f.name] for f in flows}
        worst_late = max(late.values())
        if worst_late <= 0:
            return result
        best, stuck = (worst_late, 0) if worst_late < best - 1e-9 else (best, stuck + 1)
        used = {j for name, d in late.items() if d > 0 for j in placement[name].values()}
        worst = max(used, key=lambda j: (result.utilisation[j], -cat.devices[j].price_per_hour))
        workers[worst] += max(1, workers[worst] // 50)
    return None


def _out_of_reach(flows: list[WorkflowLoad], cat: Catalogue, ceilings: dict[str, float]) -> str:
    """Why no plan meets the SLAs: per workflow, the best p95 the catalogue allows."""
    scale = {f.name: 1.0 for f in flows}
    probe = _solve_once(flows, cat, ceilings, scale, PROBE_PRICE)
    if probe is None:
        return "the SLAs cannot be met, and the planning program has no solution"
    workers, placement, slack = probe
    over = {f: s for f, s in slack.items() if s > 1e-6}
    if over:
        text = "; ".join(
            f"'{f.name}': its fastest placement takes {f.sla_s + over[f.name]:.3f} s of "
            f"service time alone (SLA {f.sla_s:g} s)"
            for f in flows
            if f.name in over
        )
        return f"the SLA cannot be met on any class of the catalogue: {text}"
    grown = _grow(flows, cat, workers, placement, {f.name: math.inf for f in flows})
    shown = grown or predict(flows, cat, workers, placement)
    text = "; ".join(
        f"'{f.name}': best predicted p95 {shown.predicted[f.name]['p95_s']:.3f} s "
        f"(SLA {f.sla_s:g} s)"
        for f in flows
    )
    return f"no fleet met every SLA once queueing is counted: {text}"


def predict(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
) -> Plan:
    """Cost, utilisation and M/M/c-predicted p50/p95 of a given fleet and placement."""
    load: dict[str, list[tuple[float, float]]] = {j: [] for j in cat.devices}  # (rate, time)
    step_time: dict[tuple[str, str], float] = {}
    for f in flows:
        for s in f.steps():
            j = placement[f.name][s.path]
            model = cat.latency(j, s.op)
            assert model is not None
            t = model.time(s.units)
            step_time[(f.name, s.path)] = t
            load[j].append((f.rate * s.chance, t))
    waits, util = {}, {}
    for j, items in load.items():
        rate = sum(r for r, _ in items)
        mean = sum(r * t for r, t in items) / rate if rate else 0.0
        w = erlang_c(rate, mean, workers.get(j, 0) * cat.devices[j].slots)
        waits[j], util[j] = w, (w.utilisation if rate else 0.0)
    predicted, budgets = {}, {}
    for f in flows:
        best50 = best95 = 0.0
        for path in f.paths():
            p50 = p95 = 0.0
            for a in path:
                j = placement[f.name][a]
                p50 += step_time[(f.name, a)] + waits[j].mean_s
                p95 += step_time[(f.name, a)] + waits[j].p95_s
            for a, b in itertools.pairwise(path):
                ja, jb = placement[f.name][a], placement[f.name][b]
                if ja != jb:
                    move = f.graph.edges[a, b].get("bytes", 0) / (cat.devices[ja].network_gbs * 1e9)
                    p50, p95 = p50 + move + HOP_S, p95 + move + HOP_S
            best50, best95 = max(best50, p50), max(best95, p95, p50)
        predicted[f.name] = {"p50_s": best50, "p95_s": best95, "sla_s": f.sla_s}
        total = sum(step_time[(f.name, s.path)] for s in f.steps()) or 1.0
        budgets[f.name] = {
            s.path: round(f.sla_s * step_time[(f.name, s.path)] / total, 4) for s in f.steps()
        }
    cost = sum(cat.devices[j].price_per_hour * n for j, n in workers.items())
    return Plan(workers, placement, cost, util, predicted, budgets)


def homogeneous(
    flows: list[WorkflowLoad], cat: Catalogue, device: str, ceiling: float = 0.7
) -> Plan:
    """A baseline: every step ``device`` can run goes to it, each other step to the cheapest
    device that can run it (a slot's price); as few of each as the load and the SLA allow."""

    def choose(flow: WorkflowLoad, op: str) -> str:
        options = eligible(cat, flow, op)
        if device in options:
            return device
        if not options:
            raise ConfigError(f"no device can run {op} (workflow '{flow.name}')")
        return min(options, key=lambda j: cat.devices[j].price_per_hour / cat.devices[j].slots)

    return sized(flows, cat, choose, ceiling)


def baselines(
    flows: list[WorkflowLoad], cat: Catalogue, ceiling: float = 0.7
) -> tuple[dict[str, Plan], list[str]]:
    """The homogeneous fleet of each catalogue device that can run some step, named by its
    devices ("h100 + cpu-16"); one that cannot meet the SLAs is skipped, with a note."""
    found: dict[str, Plan] = {}
    notes: list[str] = []
    for device in cat.devices:
        if not any(device in eligible(cat, f, s.op) for f in flows for s in f.steps()):
            continue
        try:
            base = homogeneous(flows, cat, device, ceiling)
        except ConfigError as exc:
            notes.append(f"baseline {device}: skipped ({exc})")
            continue
        used = [j for j, n in base.workers.items() if n]
        name = " + ".join([device, *sorted(j for j in used if j != device)])
        if name not in found:
            found[name] = base
    return found, notes


def sized(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    choose: Callable[[WorkflowLoad, str], str],
    ceiling: float = 0.7,
) -> Plan:
    """A fixed placement (``choose``: workflow, op -> device, e.g. hand-written routes) with as
    few workers of each device as the load and the SLAs allow, by the same queueing estimates."""
    placement: dict[str, dict[str, str]] = {}
    busy: dict[str, float] = {}
    for f in flows:
        placement[f.name] = {}
        for s in f.steps():
            j = choose(f, s.op)
            model = cat.latency(j, s.op) if j in cat.devices else None
            if model is None:
                raise ConfigError(f"{j} cannot run {s.op} ('{f.name}', step '{s.path}')")
            placement[f.name][s.path] = j
            busy[j] = busy.get(j, 0.0) + f.rate * s.chance * model.time(s.units)
    workers = {
        j: max(1, math.ceil(b / ((cat.devices[j].ceiling or ceiling) * cat.devices[j].slots)))
        for j, b in busy.items()
    }
    result = _grow(flows, cat, workers, placement, {f.name: f.sla_s for f in flows})
    if result is not None:
        return result
    floor = predict(flows, cat, {j: 100 * n for j, n in workers.items()}, placement)
    over = {f.name: floor.predicted[f.name]["p95_s"] - f.sla_s for f in flows}
    name = max(over, key=lambda n: over[n])
    raise ConfigError(
        f"the placement ({', '.join(sorted(busy))}) cannot meet the SLA of '{name}': its p95 "
        f"stays {over[name]:.3f} s over with any number of workers"
    )
