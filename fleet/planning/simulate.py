"""`fleet simulate`: a discrete-event simulation of a fleet serving a workload, routed by the
same policy objects as the live fleet (``fleet.routing.policies``), not copies.

Each device class is a FIFO queue in front of ``workers x slots`` servers. Workflows arrive as
Poisson processes; a step is ready when the steps it reads from are done; it is routed either
by a plan's placement or by ``RoutingPolicy.choose`` on a ``FleetState`` built from the
simulated queues (refreshed every ``snapshot_s`` of simulated time, as the live routers
refresh theirs every ``state_ttl``); its data moves (bytes / network bandwidth + a hop)
where it runs on another class than a step it reads from; its service time is the
model's mean times a lognormal factor (its ``spread``). Classes on one host share its cores:
a step that keeps cores busy (its CPU demand) runs slower while the host is oversubscribed
(processor sharing, as the kernel's scheduler does), which is what one machine running every
class, as ``fleet bench`` does, needs. The event loop is a plain ``heapq``:
measured against simpy in docs/planning.md, it is the faster by a wide margin for events this
small, and the simulation needs nothing else from a framework.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fleet.planning.catalogue import Catalogue
from fleet.planning.simmodel import COMPUTE_DEMAND, SimModel, catalogue_model
from fleet.planning.workload import WorkflowLoad
from fleet.routing.estimate import RouteRequest
from fleet.routing.policies import make_policy
from fleet.routing.profiles import shared_time
from fleet.routing.state import FleetState, WorkerInfo

ARRIVE, READY, DONE, HOST = 0, 1, 2, 3
_EPS = 1e-12
HOP_DEMAND = 1.0  # the engine's dispatch of a step keeps one core busy (Python, Redis)


@dataclass
class SimResult:
    policy: str
    runs: int
    steps: int
    sim_s: float
    wall_s: float
    latency: dict[str, dict[str, float]]  # flow -> p50_s, p95_s, mean_s, runs
    utilisation: dict[str, float]
    cost_per_hour: float
    sla_met: dict[str, bool] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)  # latencies

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Shape:
    """A flow's graph, precomputed for the event loop."""

    flow: WorkflowLoad
    names: list[str]
    ops: list[str]
    units: list[float]
    preds: list[list[tuple[int, float]]]  # (predecessor, bytes)
    succs: list[list[int]]
    classes: list[tuple[str, ...]]
    sources: list[int]
    guards: list[tuple[str, ...]]
    means: list[dict[str, float]]  # step -> class -> mean service time
    sigma: list[dict[str, float]]  # step -> class -> lognormal sigma
    demand: list[dict[str, float]]  # step -> class -> cores it keeps busy


def _shape(flow: WorkflowLoad, model: SimModel) -> _Shape:
    steps = flow.steps()
    pos = {s.path: i for i, s in enumerate(steps)}
    g = flow.graph
    preds = [
        [(pos[a], float(g.edges[a, s.path].get("bytes", 0))) for a in g.predecessors(s.path)]
        for s in steps
    ]
    live = model.classes
    means = []  # step -> class -> mean time, for the live classes that can run it
    for s in steps:
        opts = [j for j in model.options(flow, s) if j in live]
        means.append({j: t for j in opts if (t := model.service(flow, s, j)) is not None})
        if not means[-1]:
            raise ValueError(f"no live class can run {s.op} ({flow.name}, step {s.path})")
    classes = [tuple(m) for m in means]

    def sigma(cv: float) -> float:
        return math.sqrt(math.log(1 + cv * cv)) if cv > 0 else 0.0

    return _Shape(
        flow,
        [s.path for s in steps],
        [s.op for s in steps],
        [s.units for s in steps],
        preds,
        [[pos[b] for b in g.successors(s.path)] for s in steps],
        classes,
        [i for i, p in enumerate(preds) if not p],
        [s.guards for s in steps],
        means,
        [
            {j: sigma(model.spread(flow, s, j)) for j in m}
            for s, m in zip(steps, means, strict=True)
        ],
        [{j: model.demand(flow, s, j) for j in m} for s, m in zip(steps, means, strict=True)],
    )


class _Host:
    """Cores shared by the compute steps running on it: each progresses at ``min(1, cores /
    demand)`` of its own speed, so one virtual clock serves them all."""

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self.virtual = 0.0
        self.at = 0.0
        self.demand = 0.0
        # (virtual end, seq, run, step, demand, the event it ends in: READY or DONE)
        self.running: list[tuple[float, int, int, int, float, int]] = []
        self.version = 0

    def speed(self) -> float:
        return 1.0 if self.demand <= self.cores else self.cores / self.demand

    def advance(self, now: float) -> None:
        self.virtual += (now - self.at) * self.speed()
        self.at = now


class _Sim:
    """One simulation's state; the event loop is :meth:`run`."""

    def __init__(
        self,
        flows: list[WorkflowLoad],
        model: SimModel,
        placement: dict[str, dict[str, str]] | None,
        policy: str,
        seed: int,
        snapshot_s: float,
    ) -> None:
        self.rng = random.Random(seed)
        self.model = model
        self.shapes = [_shape(f, model) for f in flows]
        self.live = {j: c.servers for j, c in model.classes.items()}
        self.chooser = None if policy == "plan" else make_policy(policy)
        self.placement = placement or {}
        self.free = dict(self.live)
        self.queue: dict[str, deque[tuple[int, int]]] = {j: deque() for j in self.live}
        self.busy = dict.fromkeys(self.live, 0.0)
        self.net = {j: c.network_bytes_s for j, c in model.classes.items()}
        self.hosts = [_Host(c) for c in model.hosts.values()]
        index = {h: k for k, h in enumerate(model.hosts)}
        self.host_of = {j: index.get(c.host or "", -1) for j, c in model.classes.items()}
        # per run: [shape, start, pending preds, class per step, left, skipped, started at]
        self.runs: list[list[Any]] = []
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.steps = 0
        self.finished: list[tuple[int, float, float]] = []  # (flow, arrived, ended)
        self.snapshot: FleetState | None = None
        self.snap_at = -1.0
        self.snapshot_s = snapshot_s

    def push(self, at: float, kind: int, a: int, b: int) -> None:
        heapq.heappush(self.events, (at, self.seq, kind, a, b))
        self.seq += 1

    def state(self, now: float) -> FleetState:
        if self.snapshot is None or now - self.snap_at >= self.snapshot_s:
            info = {
                j: [WorkerInfo(j, (j,), n, "sim", 0, now, n - self.free[j])]
                for j, n in self.live.items()
            }
            depth = {j: len(q) for j, q in self.queue.items()}
            self.snapshot = FleetState(workers=info, depth=depth)
            self.snap_at = now
        return self.snapshot

    def route(self, r: int, i: int, now: float) -> str:
        run = self.runs[r]
        sh = self.shapes[run[0]]
        options = list(sh.classes[i])
        planned = self.placement.get(sh.flow.name, {}).get(sh.names[i])
        if planned in options:  # the fast path starts from the slow path's choice
            options.remove(planned)
            options.insert(0, planned)
        if self.chooser is None or len(options) == 1:
            return str(options[0])
        req = RouteRequest(
            "fleet.step",
            sh.ops[i],
            "compute",
            tuple(options),
            units=sh.units[i],
            sla_left_s=sh.flow.sla_s - (now - run[1]),
            remaining_steps=max(1, run[4]),
            workflow=sh.flow.name,
            path=sh.names[i],
        )
        cfg, store = self.model.cfg, self.model.profiles
        return str(self.chooser.choose(req, self.state(now), cfg, store).cls)

    def arrive(self, k: int, now: float) -> None:
        sh = self.shapes[k]
        n = len(sh.names)
        chances = sh.flow.chances
        off = {g for g in chances if self.rng.random() >= chances[g]}
        skipped = [bool(off) and any(g in off for g in gs) for gs in sh.guards]
        self.runs.append([k, now, [len(p) for p in sh.preds], [""] * n, n, skipped, [0.0] * n])
        for i in sh.sources:
            self.ready(len(self.runs) - 1, i, now)

    def ready(self, r: int, i: int, now: float) -> None:
        run = self.runs[r]
        if run[5][i]:  # a condition or a loop iteration that does not run this time
            self.push(now, DONE, r, i)
            return
        j = self.route(r, i, now)
        run[3][i] = j
        move, h = 0.0, self.host_of[j]
        for p, size in self.shapes[run[0]].preds[i]:
            jp = run[3][p]
            if jp and jp != j and (h < 0 or self.host_of[jp] != h):
                move = max(move, size / self.net[jp] + self.model.handover_s)
        if h >= 0 and self.model.hop_s > 0 and not move:
            # the dispatch is the engine's work on the host: it slows when the cores are busy
            self.on_host(h, self.model.hop_s, HOP_DEMAND, r, i, READY, now)
        else:
            self.push(now + move + self.model.hop_s, READY, r, i)

    def on_host(self, h: int, work: float, d: float, r: int, i: int, then: int, now: float) -> None:
        """Run ``work`` seconds of CPU on host ``h`` (demand ``d``), then event ``then``."""
        host = self.hosts[h]
        host.advance(now)
        host.demand += d
        heapq.heappush(host.running, (host.virtual + work, self.seq, r, i, d, then))
        self.seq += 1
        self.reschedule(h, now)

    def enqueue(self, r: int, i: int, now: float) -> None:
        j = self.runs[r][3][i]
        if self.free[j] > 0:
            self.start(j, r, i, now)
        else:
            self.queue[j].append((r, i))

    def start(self, j: str, r: int, i: int, now: float) -> None:
        self.free[j] -= 1
        run = self.runs[r]
        sh = self.shapes[run[0]]
        s = sh.sigma[i][j]
        t = sh.means[i][j]
        if s:
            t *= self.rng.lognormvariate(-s * s / 2, s)
        c = self.model.classes[j]
        if c.batches:  # it shares its worker's process with the steps running there
            k = -(-(self.live[j] - self.free[j]) // max(1, c.workers))
            profile = self.model.profiles.get(sh.ops[i], j)
            if k > 1 and profile is not None and profile.batch:
                t = shared_time(t, profile.batch, k)
        run[6][i] = now
        h = self.host_of[j]
        d = sh.demand[i][j]
        if h < 0 or d < COMPUTE_DEMAND:
            self.push(now + t, DONE, r, i)
        else:
            self.on_host(h, t, d, r, i, DONE, now)

    def reschedule(self, h: int, now: float) -> None:
        host = self.hosts[h]
        host.version += 1
        if host.running:
            left = max(0.0, host.running[0][0] - host.virtual)
            self.push(now + left / host.speed(), HOST, h, host.version)

    def host_done(self, h: int, version: int, now: float) -> None:
        host = self.hosts[h]
        if version != host.version:
            return  # the host's speed changed since: a later event stands for it
        host.advance(now)
        ended = []
        while host.running and host.running[0][0] <= host.virtual + _EPS:
            _, _, r, i, d, then = heapq.heappop(host.running)
            host.demand = max(0.0, host.demand - d)
            ended.append((r, i, then))
        self.reschedule(h, now)
        for r, i, then in ended:
            if then == DONE:
                self.done(r, i, now)
            else:
                self.enqueue(r, i, now)

    def done(self, r: int, i: int, now: float) -> None:
        run = self.runs[r]
        j = run[3][i]
        if j:
            self.steps += 1
            self.busy[j] += now - run[6][i]
            self.free[j] += 1
            if self.queue[j]:
                self.start(j, *self.queue[j].popleft(), now)
        run[4] -= 1
        if run[4] == 0:
            self.finished.append((run[0], run[1], now + self.model.tail_s))
            return
        for s in self.shapes[run[0]].succs[i]:
            run[2][s] -= 1
            if run[2][s] == 0:
                self.ready(r, s, now)

    def run(self, arrivals: list[tuple[float, int]]) -> float:
        for t, k in arrivals:
            self.push(t, ARRIVE, k, 0)
        now = 0.0
        while self.events:
            now, _, kind, a, b = heapq.heappop(self.events)
            if kind == ARRIVE:
                self.arrive(a, now)
            elif kind == READY:
                self.enqueue(a, b, now)
            elif kind == DONE:
                self.done(a, b, now)
            else:
                self.host_done(a, b, now)
        return now


def poisson(
    flows: list[WorkflowLoad], duration_s: float, rng: random.Random
) -> list[tuple[float, int]]:
    """(time, flow index) of Poisson arrivals at each flow's rate."""
    out = []
    for k, f in enumerate(flows):
        t = rng.expovariate(f.rate)
        while t < duration_s:
            out.append((t, k))
            t += rng.expovariate(f.rate)
    return sorted(out)


def simulate_model(
    flows: list[WorkflowLoad],
    model: SimModel,
    placement: dict[str, dict[str, str]] | None = None,
    policy: str = "plan",
    duration_s: float = 60.0,
    seed: int = 0,
    snapshot_s: float = 0.2,
    warmup_s: float | None = None,
    arrivals: list[tuple[float, int]] | None = None,
) -> SimResult:
    """Simulate ``model`` serving ``flows``: Poisson arrivals for ``duration_s`` seconds, or
    the given ``arrivals`` ((time, flow index), trace-driven). ``policy`` is "plan" (the
    placement) or a routing policy's name (static, preferred, least-latency, cost-sla)."""
    sim = _Sim(flows, model, placement, policy, seed, snapshot_s)
    if arrivals is None:
        arrivals = poisson(flows, duration_s, sim.rng)
    began = time.perf_counter()
    warm = duration_s * 0.1 if warmup_s is None else warmup_s
    now = sim.run(arrivals)
    wall = time.perf_counter() - began
    lat: dict[str, list[float]] = {f.name: [] for f in flows}
    for k, start, end in sim.finished:
        if start >= warm:
            lat[flows[k].name].append(end - start)
    latency = {name: stats(v) for name, v in lat.items()}
    util = {j: sim.busy[j] / (n * max(now, 1e-9)) for j, n in sim.live.items()}
    cost = sum(c.price_per_hour * c.workers for c in model.classes.values())
    met = {f.name: latency[f.name]["p95_s"] <= f.sla_s for f in flows}
    return SimResult(policy, len(sim.runs), sim.steps, now, wall, latency, util, cost, met, lat)


def simulate(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]] | None = None,
    policy: str = "plan",
    duration_s: float = 60.0,
    seed: int = 0,
    cv: float | None = None,
    snapshot_s: float = 0.2,
    warmup_s: float | None = None,
) -> SimResult:
    """Simulate a fleet of catalogue devices (``workers`` of each) for ``duration_s``
    seconds of Poisson arrivals; see :func:`simulate_model`. Service times vary by each
    (op, device)'s coefficient of variation in the catalogue, or by ``cv`` for all."""
    model = catalogue_model(flows, cat, workers, cv)
    return simulate_model(flows, model, placement, policy, duration_s, seed, snapshot_s, warmup_s)


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_s": math.nan, "p95_s": math.nan, "mean_s": math.nan, "runs": 0}
    v = sorted(values)

    def at(p: float) -> float:
        return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

    return {"p50_s": at(0.5), "p95_s": at(0.95), "mean_s": sum(v) / len(v), "runs": len(v)}
