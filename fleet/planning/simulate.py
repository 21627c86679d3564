"""`fleet simulate`: a discrete-event simulation of a fleet serving a workload, routed by the
same policy objects as the live fleet (``fleet.routing.policies``), not copies.

Each device class is a FIFO queue in front of ``workers x slots`` servers. Workflows arrive as
Poisson processes; a step is ready when the steps it reads from are done; it is routed either
by a plan's placement or by ``RoutingPolicy.choose`` on a ``FleetState`` built from the
simulated queues (refreshed every ``snapshot_s`` of simulated time, as the live routers
refresh theirs every ``state_ttl``); its data moves (bytes / network bandwidth + a hop)
where it runs on another class than a step it reads from; its service time is the
catalogue's latency times a lognormal factor (``cv``). The event loop is a plain ``heapq``:
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

from fleet.config import ClassSpec, FleetConfig
from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import HOP_S, eligible
from fleet.planning.workload import Flow
from fleet.routing.policies import RouteRequest, make_policy
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.routing.state import FleetState, WorkerInfo

ARRIVE, READY, DONE = 0, 1, 2


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

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Shape:
    """A flow's graph, precomputed for the event loop."""

    flow: Flow
    names: list[str]
    ops: list[str]
    units: list[float]
    preds: list[list[tuple[int, float]]]  # (predecessor, bytes)
    succs: list[list[int]]
    classes: list[tuple[str, ...]]
    sources: list[int]


def _shape(flow: Flow, cat: Catalogue) -> _Shape:
    steps = flow.steps()
    pos = {s.path: i for i, s in enumerate(steps)}
    g = flow.graph
    preds = [
        [(pos[a], float(g.edges[a, s.path].get("bytes", 0))) for a in g.predecessors(s.path)]
        for s in steps
    ]
    succs = [[pos[b] for b in g.successors(s.path)] for s in steps]
    classes = [tuple(eligible(cat, flow, s.op)) for s in steps]
    sources = [i for i, p in enumerate(preds) if not p]
    return _Shape(
        flow,
        [s.path for s in steps],
        [s.op for s in steps],
        [s.units for s in steps],
        preds,
        succs,
        classes,
        sources,
    )


def fleet_config(cat: Catalogue, workers: dict[str, int]) -> FleetConfig:
    """The configuration the live fleet would have: one class per device, its price."""
    if not any(workers.values()):
        raise ValueError("no workers: the fleet to simulate is empty")
    classes = {
        j: ClassSpec(
            name=j,
            concurrency=max(1, d.slots),
            price_per_hour=d.price_per_hour,
            network_mb_s=d.network_gbs * 1000,
        )
        for j, d in cat.devices.items()
        if workers.get(j)
    }
    return FleetConfig(classes=classes, control_class=next(iter(classes)), policy="least-latency")


def profile_store(cat: Catalogue, flows: list[Flow]) -> ProfileStore:
    store = ProfileStore(source="catalogue")
    for f in flows:
        for s in f.steps():
            for j in cat.devices:
                m = cat.latency(j, s.op)
                if m is not None:
                    store.put(OpProfile(s.op, j, m.fixed_s, m.per_unit_s, samples=1))
    return store


class _Sim:
    """One simulation's state; the event loop is :meth:`run`."""

    def __init__(
        self,
        flows: list[Flow],
        cat: Catalogue,
        workers: dict[str, int],
        placement: dict[str, dict[str, str]] | None,
        policy: str,
        seed: int,
        cv: float,
        snapshot_s: float,
    ) -> None:
        self.rng = random.Random(seed)
        self.sigma = math.sqrt(math.log(1 + cv * cv)) if cv > 0 else 0.0
        self.shapes = [_shape(f, cat) for f in flows]
        self.live = {j: n * cat.devices[j].slots for j, n in workers.items() if n}
        self.cfg = fleet_config(cat, workers)
        self.store = profile_store(cat, flows)
        self.chooser = None if policy == "plan" else make_policy(policy)
        self.placement = placement or {}
        self.free = dict(self.live)
        self.queue: dict[str, deque[tuple[int, int]]] = {j: deque() for j in self.live}
        self.busy = dict.fromkeys(self.live, 0.0)
        self.net = {j: cat.devices[j].network_gbs * 1e9 for j in self.live}
        # mean service time of step i of shape k on class j: means[k][i][j]
        self.means = [
            [
                {j: m.time(sh.units[i]) for j in sh.classes[i] if (m := cat.latency(j, op))}
                for i, op in enumerate(sh.ops)
            ]
            for sh in self.shapes
        ]
        self.runs: list[list[Any]] = []  # [shape, start, pending preds, class per step, left]
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
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
        options = [c for c in sh.classes[i] if c in self.live]
        planned = self.placement.get(sh.flow.name, {}).get(sh.names[i])
        if planned in options:  # the fast path starts from the slow path's choice
            options.remove(planned)
            options.insert(0, planned)
        if not options:
            raise ValueError(f"no live class can run {sh.ops[i]} ({sh.flow.name})")
        if self.chooser is None:
            return str(options[0])
        req = RouteRequest(
            "fleet.step",
            sh.ops[i],
            "compute",
            tuple(options),
            units=sh.units[i],
            sla_left_s=sh.flow.sla_s - (now - run[1]),
            remaining_steps=max(1, run[4]),
        )
        return str(self.chooser.choose(req, self.state(now), self.cfg, self.store).cls)

    def start(self, j: str, r: int, i: int, now: float) -> None:
        self.free[j] -= 1
        base = self.means[self.runs[r][0]][i][j]
        s = self.sigma
        t = base * self.rng.lognormvariate(-s * s / 2, s) if s else base
        self.busy[j] += t
        self.push(now + t, DONE, r, i)

    def ready(self, r: int, i: int, now: float) -> None:
        run = self.runs[r]
        j = self.route(r, i, now)
        run[3][i] = j
        move = 0.0
        for p, size in self.shapes[run[0]].preds[i]:
            if run[3][p] != j:
                move = max(move, size / self.net[run[3][p]] + HOP_S)
        self.push(now + move, READY, r, i)

    def done(self, r: int, i: int, now: float, warm: float, lat: dict[str, list[float]]) -> None:
        run = self.runs[r]
        j = run[3][i]
        self.free[j] += 1
        if self.queue[j]:
            self.start(j, *self.queue[j].popleft(), now)
        run[4] -= 1
        if run[4] == 0:
            if run[1] >= warm:
                lat[self.shapes[run[0]].flow.name].append(now - run[1])
            return
        for s in self.shapes[run[0]].succs[i]:
            run[2][s] -= 1
            if run[2][s] == 0:
                self.ready(r, s, now)

    def run(self, duration_s: float, warm: float) -> tuple[int, float, dict[str, list[float]]]:
        for k, sh in enumerate(self.shapes):
            t = self.rng.expovariate(sh.flow.rate)
            while t < duration_s:
                self.push(t, ARRIVE, k, 0)
                t += self.rng.expovariate(sh.flow.rate)
        lat: dict[str, list[float]] = {sh.flow.name: [] for sh in self.shapes}
        steps, now = 0, 0.0
        while self.events:
            now, _, kind, a, b = heapq.heappop(self.events)
            if kind == ARRIVE:
                sh = self.shapes[a]
                n = len(sh.names)
                self.runs.append([a, now, [len(p) for p in sh.preds], [""] * n, n])
                for i in sh.sources:
                    self.ready(len(self.runs) - 1, i, now)
            elif kind == READY:
                j = self.runs[a][3][b]
                if self.free[j] > 0:
                    self.start(j, a, b, now)
                else:
                    self.queue[j].append((a, b))
            else:
                steps += 1
                self.done(a, b, now, warm, lat)
        return steps, now, lat


def simulate(
    flows: list[Flow],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]] | None = None,
    policy: str = "plan",
    duration_s: float = 60.0,
    seed: int = 0,
    cv: float = 0.2,
    snapshot_s: float = 0.2,
    warmup_s: float | None = None,
) -> SimResult:
    """Simulate ``duration_s`` seconds of arrivals; ``policy`` is "plan" (the placement) or a
    routing policy's name (static, preferred, least-latency, cost-sla)."""
    sim = _Sim(flows, cat, workers, placement, policy, seed, cv, snapshot_s)
    began = time.perf_counter()
    warm = duration_s * 0.1 if warmup_s is None else warmup_s
    steps, now, lat = sim.run(duration_s, warm)
    wall = time.perf_counter() - began
    latency = {name: _stats(v) for name, v in lat.items()}
    util = {j: sim.busy[j] / (n * max(now, 1e-9)) for j, n in sim.live.items()}
    cost = sum(cat.devices[j].price_per_hour * n for j, n in workers.items())
    met = {f.name: latency[f.name]["p95_s"] <= f.sla_s for f in flows}
    return SimResult(policy, len(sim.runs), steps, now, wall, latency, util, cost, met)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_s": math.nan, "p95_s": math.nan, "mean_s": math.nan, "runs": 0}
    v = sorted(values)

    def at(p: float) -> float:
        return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

    return {"p50_s": at(0.5), "p95_s": at(0.95), "mean_s": sum(v) / len(v), "runs": len(v)}
