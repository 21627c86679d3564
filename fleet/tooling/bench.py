"""``fleet bench``: heterogeneous routing against homogeneous and static deployments.

Every configuration runs the same workload -- a mix of the example workflows, arriving open
loop (Poisson, seeded) or at a fixed concurrency -- on its own local fleet on this machine,
started fresh and warmed up (models loaded) before measuring. Configurations are interleaved
over rounds (A B C D, then D C B A) so that machine drift favours none. Metrics come from the
run records and traces: see :mod:`fleet.tooling.benchreport`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleet.config import ClassSpec, FleetConfig, default_classes, load_config
from fleet.constants import BLOB_PREFIX
from fleet.runtime.local import LocalFleet
from fleet.workflow.loader import load_workflow
from fleet.workflow.model import WorkflowSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Deployment:
    name: str
    policy: str
    classes: dict[str, ClassSpec]
    description: str


MODEL_CLASSES = ("gpu", "npu-lite", "cpu")


def deployments() -> list[Deployment]:
    hetero = default_classes()
    # Every class that may be given a model op loads the models at start: otherwise a policy
    # that spreads work would pay model loads inside the measurement.
    for name in MODEL_CLASSES:
        hetero[name] = hetero[name].model_copy(update={"preload": ["llm", "embed", "stt"]})
    compute_slots = sum(c.concurrency for c in hetero.values() if c.pool == "prefork")
    big = ClassSpec(
        name="cpu",
        description="one pool for every step (priced as the accelerator box)",
        pool="prefork",
        concurrency=compute_slots,
        time_limit=900,
        price_per_hour=hetero["gpu"].price_per_hour,
        preload=["llm", "embed", "stt"],
    )
    return [
        Deployment(
            "homogeneous",
            "static",
            {"cpu": big},
            f"every step on one prefork pool of {compute_slots} slots, priced as gpu",
        ),
        Deployment(
            "static", "static", hetero, "per-op task_routes: each op on its preferred class"
        ),
        Deployment("least-latency", "least-latency", hetero, "fleet policy least-latency"),
        Deployment("cost-sla", "cost-sla", hetero, "fleet policy cost-sla"),
    ]


@dataclass(frozen=True)
class Job:
    """One kind of workflow in the mix, with its inputs and latency SLA."""

    name: str
    file: Path
    inputs: Callable[[dict[str, str]], dict[str, Any]]
    sla_s: float
    weight: float

    def spec(self) -> WorkflowSpec:
        """The workflow without placement hints (prefer:), so that the policy decides."""
        spec = load_workflow(self.file)
        _strip_hints(spec)
        return spec


def _strip_hints(spec: WorkflowSpec) -> None:
    for node in spec.nodes:
        node.prefer = None
        if node.workflow is not None:
            _strip_hints(node.workflow)


def jobs(quick: bool) -> list[Job]:
    triage = Job(
        "triage",
        EXAMPLES / "triage.yaml",
        lambda ctx: {"ticket": "My blender arrived broken and I was charged twice, refund please."},
        sla_s=2.0,
        weight=0.5,
    )
    rag = Job(
        "rag",
        EXAMPLES / "rag.yaml",
        lambda ctx: {"question": "How long does standard shipping take?", "index": ctx["index"]},
        sla_s=6.0,
        weight=0.3,
    )
    voice = Job(
        "voice",
        EXAMPLES / "voice_agent.yaml",
        lambda ctx: {"audio": ctx["audio"], "api": ctx["api"], "index": ctx["index"]},
        sla_s=12.0,
        weight=0.2,
    )
    return [triage, rag] if quick else [triage, rag, voice]


@dataclass
class Workload:
    """Open loop (``rate``: Poisson arrivals per second) or closed loop (``concurrency``),
    for ``count`` workflows or ``duration_s`` seconds of arrivals."""

    rate: float | None = None
    concurrency: int | None = None
    count: int | None = None
    duration_s: float | None = None
    seed: int = 7

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give either an arrival rate or a concurrency")
        if self.count is None and (self.duration_s is None or self.rate is None):
            raise ValueError("give a count (or, with an arrival rate, a duration)")

    def plan(self, mix: list[Job]) -> list[tuple[float, Job]]:
        """(arrival offset in seconds, job), the same for every deployment (seeded)."""
        rng = np.random.default_rng(self.seed)
        weights = np.array([j.weight for j in mix]) / sum(j.weight for j in mix)
        out: list[tuple[float, Job]] = []
        t = 0.0
        while self.count is None or len(out) < self.count:
            if self.rate:
                t += float(rng.exponential(1.0 / self.rate))
                if self.duration_s is not None and t > self.duration_s:
                    break
            out.append((t, mix[int(rng.choice(len(mix), p=weights))]))
        return out


@dataclass
class Result:
    deployment: str
    round: int
    runs: list[dict[str, Any]] = field(default_factory=list)  # one row per workflow
    started: float = 0.0
    ended: float = 0.0
    slots: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)


def config_for(dep: Deployment, broker: str, data_dir: str) -> FleetConfig:
    base = load_config(env={})
    control = "io" if "io" in dep.classes else next(iter(dep.classes))
    return base.model_copy(
        update={
            "broker_url": broker,
            "result_backend": "",
            "classes": dep.classes,
            "control_class": control,
            "policy": dep.policy,
            "data_dir": data_dir,
            "heartbeat_interval": 0.5,
            "worker_ttl": 3.0,
            "state_ttl": 0.25,
        }
    )


def _write_config(cfg: FleetConfig, path: Path) -> None:
    """The deployment's configuration for its workers (classes it lacks are disabled)."""
    import json

    data = cfg.model_dump(mode="json")
    for name in default_classes():
        data["classes"].setdefault(name, {"enabled": False})
    path.write_text(json.dumps(data))  # YAML is a JSON superset


def run_deployment(
    dep: Deployment,
    rnd: int,
    workload: Workload,
    mix: list[Job],
    ctx: dict[str, str],
    workdir: Path,
    tick: Callable[[], None],
) -> Result:
    """Start this deployment's fleet, warm it up, run the workload, stop it."""
    from fleet.runtime.app import create_app
    from fleet.runtime.client import Fleet

    cfg = config_for(dep, ctx["broker"], ctx["data_dir"])
    cfg_file = workdir / f"fleet-{dep.name}.yaml"
    _write_config(cfg, cfg_file)
    fleet = LocalFleet(
        cfg,
        [],
        False,
        workdir / dep.name,
        "WARNING",
        say=lambda s: None,
        env=worker_env(cfg_file, ctx, workdir),
    )
    fleet.start(wait=120)
    try:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        if ctx.get("audio_file"):  # by reference, as a remote client's; each fleet has its
            ctx["audio"] = client.upload(ctx["audio_file"])  # own Redis: upload it again
        warm_up(client, cfg, dep, mix, ctx)
        return _drive(client, dep, rnd, workload, mix, ctx, tick)
    finally:
        fleet.stop()


def warm_up(
    client: Any, cfg: FleetConfig, dep: Deployment, mix: list[Job], ctx: dict[str, str]
) -> None:
    """Every process of every class runs each workflow once before the measurement: a
    process's first run pays for caches (llama.cpp reuses the prompt prefix it evaluated
    last; connections) that the measured runs would otherwise pay at random, depending on
    which process a policy happens to pick."""
    from fleet.registry import registry

    registry.load_plugins()
    for job in mix:
        client.submit(job.spec(), job.inputs(ctx), policy=dep.policy).get(timeout=300)
        for name, spec in dep.classes.items():
            if spec.pool != "prefork":
                continue
            pinned = job.spec()
            _prefer(pinned, name, cfg, registry)
            runs = [
                client.submit(pinned, job.inputs(ctx), policy="static")
                for _ in range(spec.concurrency)
            ]
            for run in runs:  # at once: each of the class's processes takes one
                run.get(timeout=300)


def _prefer(spec: WorkflowSpec, cls: str, cfg: FleetConfig, registry: Any) -> None:
    for node in spec.nodes:
        if node.workflow is not None:
            _prefer(node.workflow, cls, cfg, registry)
        elif node.op and cls in registry.get(node.op).eligible(cfg.classes):
            node.prefer = cls


def _drive(
    client: Any,
    dep: Deployment,
    rnd: int,
    workload: Workload,
    mix: list[Job],
    ctx: dict[str, str],
    tick: Callable[[], None],
) -> Result:
    schedule = workload.plan(mix)
    specs = {job.name: job.spec() for job in mix}
    result = Result(
        dep.name,
        rnd,
        slots={c: s.concurrency for c, s in dep.classes.items()},
        prices={c: s.price_per_hour for c, s in dep.classes.items()},
    )
    handles: list[tuple[Job, Any]] = []
    result.started = time.time()
    start = time.monotonic()
    pending: list[tuple[Job, Any]] = []
    for offset, job in schedule:
        if workload.rate:
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:  # closed loop: keep `concurrency` in flight
            while len(pending) >= (workload.concurrency or 1):
                pending = [(j, h) for j, h in pending if h.status() == "running"]
                time.sleep(0.01)
        handle = client.submit(specs[job.name], job.inputs(ctx), policy=dep.policy, sla_s=job.sla_s)
        handles.append((job, handle))
        pending.append((job, handle))
    for job, handle in handles:
        info = handle._store.wait(handle.id, 300)  # a stuck run is reported, not waited on
        result.runs.append(_row(job, handle, info))
        tick()
    result.ended = max([r["finished_at"] or 0 for r in result.runs] + [time.time()])
    return result


def _row(job: Job, handle: Any, info: Any) -> dict[str, Any]:
    trace = handle.trace()
    busy: dict[str, float] = {}
    decide = []
    for e in trace:
        if e.cls and e.status in ("succeeded", "failed"):
            busy[e.cls] = busy.get(e.cls, 0.0) + e.run_s
        if e.route.get("decide_us") is not None:
            decide.append(float(e.route["decide_us"]))
    done = info is not None and info.finished_at is not None and info.submitted_at is not None
    return {
        "job": job.name,
        "run": handle.id,
        "status": info.status if info else "unknown",
        "submitted_at": info.submitted_at if info else None,
        "finished_at": info.finished_at if info else None,
        "latency_s": (info.finished_at - info.submitted_at) if done else None,
        "sla_s": job.sla_s,
        "busy_s": busy,
        "steps": sum(1 for e in trace if e.status == "succeeded"),
        "decide_us": decide,
        "answer": answer_digest(info.outputs if info else None),
        # each step that ran: node, op, class, started, ended, CPU seconds (calibration)
        "trace": [
            [e.node, e.op, e.cls, e.started_at, e.ended_at, e.cpu_s]
            for e in trace
            if e.status == "succeeded"
        ],
    }


def answer_digest(outputs: dict[str, Any] | None) -> str | None:
    """A fingerprint of a run's outputs, blob references left out (their ids are random):
    the same inputs under greedy decoding must give the same one on every deployment."""
    if outputs is None:
        return None

    def strip(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(BLOB_PREFIX):
            return "<blob>"
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    text = json.dumps(strip(outputs), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answer_agreement(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per workflow: how many different answers the deployments gave to the same inputs
    (routing must not change answers: 1 each)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for res in results:
        for run in res.runs:
            if run.get("answer"):
                seen.setdefault(run["job"], {}).setdefault(run["answer"], set()).add(res.deployment)
    return {
        job: {
            "distinct": len(answers),
            "agree": len(answers) == 1,
            "by_answer": {a: sorted(deps) for a, deps in answers.items()},
        }
        for job, answers in seen.items()
    }


def worker_env(cfg_file: Path, ctx: dict[str, str], workdir: Path) -> dict[str, str]:
    """The workers' configuration: the deployment's file, plus the example order API as the
    one HTTP endpoint tools may call."""
    env = {"FLEET_CONFIG": str(cfg_file)}
    if ctx.get("api"):
        env["FLEET_HTTP_ALLOW"] = ctx["api"].removeprefix("http://")
    return env


def prepare(workdir: Path, quick: bool) -> dict[str, str]:
    """Inputs every deployment shares: broker address, data dir, question audio."""
    from fleet.runtime.local import free_port
    from fleet.tooling.demo import speak_to_file

    ctx = {
        "broker": f"redis://127.0.0.1:{free_port()}/0",
        "data_dir": os.environ.get("FLEET_DATA_DIR") or str(workdir / "data"),
        "index": "bench-kb",
        "api": "",
        "audio": "",
        "audio_file": "",
    }
    if not quick:
        question = speak_to_file("Hello. Where is my order 1042?", workdir / "q.wav")
        ctx["audio_file"] = str(question)
    return ctx


def build_index(ctx: dict[str, str], workdir: Path) -> None:
    """The knowledge-base index, built once on a throwaway fleet (every deployment reads it)."""
    from fleet.runtime.app import create_app
    from fleet.runtime.client import Fleet

    cfg = config_for(deployments()[0], ctx["broker"], ctx["data_dir"])
    cfg_file = workdir / "fleet-index.yaml"
    _write_config(cfg, cfg_file)
    env = worker_env(cfg_file, ctx, workdir)
    with LocalFleet(cfg, [], False, workdir / "index", "WARNING", say=lambda s: None, env=env):
        client = Fleet(app=create_app(cfg), cfg=cfg)
        docs = {"docs": client.upload(EXAMPLES / "kb"), "index": ctx["index"]}
        client.submit(EXAMPLES / "kb_build.yaml", docs).get(timeout=600)


def order_rounds(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """A B C D, D C B A, A B C D, ...: each deployment early and late alike."""
    out = []
    for r in range(rounds):
        seq = names if r % 2 == 0 else list(reversed(names))
        out += [(r, n) for n in seq]
    return out


@contextmanager
def session(
    out: Path, quick: bool, say: Callable[[str], None]
) -> Iterator[tuple[Path, dict[str, str]]]:
    """What every deployment shares: inputs, the example order API, the index (built once)."""
    from fleet.tooling.demo import OrderAPI

    workdir = out / "work"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    ctx = prepare(workdir, quick)
    api = OrderAPI(workdir)
    ctx["api"] = api.url
    try:
        say("building the knowledge-base index once (every deployment reads it)")
        build_index(ctx, workdir)
        yield workdir, ctx
    finally:
        api.stop()


def run_bench(
    workload: Workload,
    quick: bool,
    rounds: int,
    names: list[str],
    out: Path,
    say: Callable[[str], None],
    tick: Callable[[], None],
) -> tuple[list[dict[str, Any]], list[Path], dict[str, Any]]:
    """The whole benchmark: shared inputs, every deployment per round, then the report."""
    from fleet.tooling.benchreport import summarize, write

    mix = jobs(quick)
    deps = {d.name: d for d in deployments() if d.name in names}
    results: list[Result] = []
    began = time.time()
    with session(out, quick, say) as (workdir, ctx):
        for rnd, name in order_rounds(list(deps), rounds):
            say(f"round {rnd + 1}/{rounds}: {name} ({deps[name].description})")
            results.append(run_deployment(deps[name], rnd, workload, mix, ctx, workdir, tick))
    rows = [summarize(n, [r for r in results if r.deployment == n]) for n in deps]
    meta = {
        "workload": {
            k: getattr(workload, k) for k in ("rate", "concurrency", "count", "duration_s", "seed")
        },
        "mix": [{"job": j.name, "weight": j.weight, "sla_s": j.sla_s} for j in mix],
        "rounds": rounds,
        "order": order_rounds(list(deps), rounds),
        "deployments": {d.name: d.description for d in deps.values()},
        "cpus": os.cpu_count(),
        "seconds": round(time.time() - began, 1),
        "quick": quick,
        "answers": answer_agreement(results),
    }
    return rows, write(out, rows, meta, results), meta
