"""``fleet calibrate``: the simulator against the live fleet on this machine.

1. **Profile.** Each workflow of the bench mix runs alone, one at a time, on two deployments:
   ``static`` (model ops on the gpu / npu-lite classes, 2 native threads each here) and
   ``homogeneous`` (every op on one pool, 1 thread per slot). The traces give each node's
   service time and CPU seconds per thread count, how often each node runs (conditions,
   loop iterations) and the engine's dispatch time between steps.
2. **Measure.** The bench workload runs on each deployment under load (``fleet bench``'s
   runner, one round).
3. **Predict.** The simulator replays the same arrivals (the measured submission times) on
   a model of the same deployment: its classes and slots, every class on one host with this
   machine's cores (processor sharing: the steps' CPU demand, measured in step 1, slows them
   down together when the cores are oversubscribed), routed by the same policy objects.

Nothing measured in step 2 goes into the model: the comparison is a prediction.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fleet.config import FleetConfig
from fleet.deploy.launch import native_threads
from fleet.loadtest.arrivals import Arrivals, Job, jobs
from fleet.loadtest.deployments import Deployment, config_for, deployments
from fleet.loadtest.harness import run_deployment, session
from fleet.planning.simmodel import SimClass, SimModel
from fleet.planning.simulate import simulate_model, stats
from fleet.planning.workload import Shape, StepLoad, WorkflowLoad, flatten, plain
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.sdk.registry import registry

PROFILED = ("static", "homogeneous")  # between them, every op at 1 and at 2 threads here
HOST = "this-machine"


def key(path: str) -> str:
    """A trace's node path as the planning graph names it: the first loop iteration and map
    items without their marks (``tools#1/call`` -> ``tools/call``, ``tools#2/call`` kept)."""
    return re.sub(r"\[\d+\]", "", re.sub(r"#1(?=/)", "", path))


def _scope(path: str) -> str:
    """The sub-workflow (iteration) a node path sits in: ``tools#2/call`` -> ``tools#2/``."""
    return path.rsplit("/", 1)[0] + "/" if "/" in path else ""


def class_threads(dep: Deployment, cpus: int) -> dict[str, int]:
    return {c: native_threads(spec, cpus, False) for c, spec in dep.classes.items()}


@dataclass
class NodeTimes:
    """What the profile runs of one workflow measured."""

    runs: int = 0
    # node key -> native threads -> [(run_s, cpu_s)]
    samples: dict[str, dict[int, list[tuple[float, float]]]] = field(default_factory=dict)
    ran: dict[str, int] = field(default_factory=dict)  # node key -> runs it ran in
    scopes: dict[str, int] = field(default_factory=dict)  # scope prefix -> runs it ran in
    loops: dict[str, list[int]] = field(default_factory=dict)  # loop path -> iterations per run
    ops: dict[str, str] = field(default_factory=dict)  # node key -> its op

    def chance(self, path: str) -> float:
        scope = _scope(path)
        seen = self.scopes.get(scope, 0) if scope else self.runs
        return self.ran.get(path, 0) / seen if seen else 0.0

    def time(self, path: str, threads: int) -> tuple[float, float, float] | None:
        """(median run s, its coefficient of variation, cores busy) at ``threads``, or at the
        nearest thread count measured; None if the node never ran."""
        by = self.samples.get(path) or self.samples.get(plain(path))
        if not by:
            return None
        t = min(by, key=lambda n: (abs(n - threads), -n))
        runs = [r for r, _ in by[t]]
        med = statistics.median(runs)
        cv = statistics.pstdev(runs) / statistics.fmean(runs) if len(runs) > 1 else 0.1
        cpu = statistics.median(c / r for r, c in by[t] if r > 0) if med > 0 else 0.0
        return med, min(max(cv, 0.02), 1.0), cpu


@dataclass
class Profile:
    times: dict[str, NodeTimes]  # job name -> its nodes
    hop_s: float  # the engine's time from a step's end to the next one's start
    tail_s: float  # from the last step's end to the run's end


def profile(doc: dict[str, Any]) -> Profile:
    """Node times, chances and dispatch time from the isolated runs of a calibration."""
    cpus = int(doc["cpus"])
    deps = {d.name: d for d in deployments()}
    times: dict[str, NodeTimes] = defaultdict(NodeTimes)
    lags, tails = [], []
    for dep_name, rows in doc["profile"].items():
        threads = class_threads(deps[dep_name], cpus)
        for row in rows:
            if row["status"] != "succeeded":
                continue
            nt = times[row["job"]]
            nt.runs += 1
            _add_run(nt, row["trace"], threads)
            lags += _lags(row)
            tails.append(row["finished_at"] - max(e[4] for e in row["trace"]))
    return Profile(dict(times), statistics.median(lags), statistics.median(tails))


def _add_run(nt: NodeTimes, trace: list[list[Any]], threads: dict[str, int]) -> None:
    nodes, scopes = set(), set()
    loops: dict[str, int] = {}
    for node, op, cls, start, end, cpu in trace:
        k = key(node)
        nodes.add(k)
        nt.ops[k] = op
        if _scope(k):
            scopes.add(_scope(k))
        for m in re.finditer(r"#(\d+)/", node):
            loop = plain(node[: m.start()])
            loops[loop] = max(loops.get(loop, 0), int(m.group(1)))
        by = nt.samples.setdefault(k, {})
        by.setdefault(threads.get(cls or "", 1), []).append((end - start, cpu or 0.0))
    for k in nodes:
        nt.ran[k] = nt.ran.get(k, 0) + 1
    for s in scopes:
        nt.scopes[s] = nt.scopes.get(s, 0) + 1
    for loop, n in loops.items():
        nt.loops.setdefault(loop, []).append(n)


def _lags(row: dict[str, Any]) -> list[float]:
    """Each step's wait after the step before it ended (the first: after submission)."""
    out = []
    ends = sorted(e[4] for e in row["trace"])
    for e in row["trace"]:
        before = [t for t in ends if t <= e[3]]
        out.append(e[3] - (before[-1] if before else row["submitted_at"]))
    return out


def flow_for(job: Job, nt: NodeTimes) -> WorkflowLoad:
    """The job's planning graph, shaped by what its profile runs did."""
    spec = job.spec()
    loops = {k: statistics.fmean(v) for k, v in nt.loops.items()}
    graph, _ = flatten(spec, {}, None, Shape(loops=loops))
    chance = {p: nt.chance(p) for p in graph.nodes}
    graph, chances = flatten(spec, {}, None, Shape(chance=chance, loops=loops))
    return WorkflowLoad(job.name, 1.0, job.sla_s, graph, None, chances)


def model_for(dep: Deployment, prof: Profile, cfg: FleetConfig, cpus: int) -> SimModel:
    """The deployment as the simulator sees it: its classes on one host of ``cpus`` cores."""
    registry.load_plugins()
    threads = class_threads(dep, cpus)
    classes = {
        c: SimClass(c, s.concurrency, s.price_per_hour, 1, 1e9, HOST, s.batches)
        for c, s in dep.classes.items()
    }

    @cache  # service, demand and spread each ask, per step and class
    def at(flow: str, path: str, j: str) -> tuple[float, float, float] | None:
        return prof.times[flow].time(path, threads[j])

    def measured(f: WorkflowLoad, s: StepLoad, j: str) -> tuple[float, float, float] | None:
        return at(f.name, s.path, j)

    def pick(index: int, default: float) -> Callable[[WorkflowLoad, StepLoad, str], float]:
        def get(f: WorkflowLoad, s: StepLoad, j: str) -> float:
            m = measured(f, s, j)
            return default if m is None else m[index]

        return get

    def service(f: WorkflowLoad, s: StepLoad, j: str) -> float | None:
        m = measured(f, s, j)
        return None if m is None else m[0]

    def options(f: WorkflowLoad, s: StepLoad) -> list[str]:
        return registry.get(s.op).eligible(cfg.classes)

    store = ProfileStore(source="calibration")  # the routers' estimates: the same times
    for nt in prof.times.values():
        for path, op in nt.ops.items():
            for c in dep.classes:
                m = nt.time(path, threads[c])
                if m is not None and store.get(op, c) is None:
                    store.put(OpProfile(op, c, m[0], 0.0, samples=1))
    return SimModel(
        classes,
        service,
        options,
        cfg,
        store,
        hosts={HOST: float(cpus)},
        demand=pick(2, 0.0),
        spread=pick(1, 0.1),
        hop_s=prof.hop_s,
        tail_s=prof.tail_s,
        handover_s=0.0,  # one host: no network between classes
    )


def measure(
    arrivals: Arrivals,
    mix_name: str,
    names: list[str],
    profile_runs: int,
    out: Path,
    say: Callable[[str], None],
    tick: Callable[[], None],
) -> dict[str, Any]:
    """The live part: isolated profile runs, then the bench workload on each deployment."""
    mix = jobs(mix_name)
    deps = {d.name: d for d in deployments()}
    alone = Arrivals(concurrency=1, count=profile_runs, seed=arrivals.seed)
    doc: dict[str, Any] = {"cpus": os.cpu_count() or 1, "mix": mix_name, "profile": {}}
    doc["workload"] = {"rate": arrivals.rate, "duration_s": arrivals.duration_s}
    doc["bench"] = {}
    with session(out, mix_name != "full", say) as (workdir, ctx):
        for name in PROFILED:
            say(f"profile: {profile_runs} workflows one at a time on {name}")
            res = run_deployment(deps[name], 0, alone, mix, ctx, workdir, tick)
            doc["profile"][name] = res.runs
        for name in names:
            say(f"measure: the workload on {name} ({deps[name].description})")
            res = run_deployment(deps[name], 0, arrivals, mix, ctx, workdir, tick)
            doc["bench"][name] = res.runs
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(doc, default=str))
    return doc


@dataclass
class Row:
    deployment: str
    measured: dict[str, float]  # p50_s, p95_s (every workflow of the mix together)
    simulated: dict[str, float]
    per_job: dict[str, dict[str, dict[str, float]]]  # job -> measured / simulated -> stats

    def error(self, stat: str) -> float:
        return self.simulated[stat] / self.measured[stat] - 1.0


def mix_of(doc: dict[str, Any]) -> str:
    """The mix a saved calibration ran (files from before ``mix`` say ``quick``)."""
    return str(doc.get("mix") or ("quick" if doc.get("quick") else "full"))


def compare(doc: dict[str, Any], seeds: int = 5) -> list[Row]:
    """Simulate each measured deployment on the arrivals it saw; compare percentiles."""
    prof = profile(doc)
    mix = {j.name: j for j in jobs(mix_of(doc))}
    order = [n for n in mix if n in prof.times]
    flows = [flow_for(mix[n], prof.times[n]) for n in order]
    deps = {d.name: d for d in deployments()}
    rows = []
    for name, runs in doc["bench"].items():
        dep = deps[name]
        cfg = config_for(dep, "redis://unused", "")
        model = model_for(dep, prof, cfg, int(doc["cpus"]))
        t0 = min(r["submitted_at"] for r in runs)
        arrivals = sorted((r["submitted_at"] - t0, order.index(r["job"])) for r in runs)
        sims = [
            simulate_model(
                flows,
                model,
                None,
                dep.policy,
                seed=s,
                warmup_s=0.0,
                arrivals=arrivals,
                snapshot_s=cfg.state_ttl,
            )
            for s in range(seeds)
        ]
        live = [r["latency_s"] for r in runs if r["latency_s"] is not None]
        sim_all = [x for r in sims for v in r.samples.values() for x in v]
        per_job = {
            n: {
                "measured": stats(
                    [r["latency_s"] for r in runs if r["job"] == n and r["latency_s"]]
                ),
                "simulated": stats([x for r in sims for x in r.samples[n]]),
            }
            for n in order
        }
        rows.append(Row(name, stats(live), stats(sim_all), per_job))
    return rows
