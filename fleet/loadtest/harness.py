"""``fleet bench``: heterogeneous routing against homogeneous and static deployments.

Every configuration runs the same workload -- a mix of the example workflows, arriving open
loop (Poisson, seeded) or at a fixed concurrency -- on its own local fleet on this machine,
started fresh and warmed up (models loaded) before measuring. Configurations are interleaved
over rounds (A B C D, then D C B A) so that machine drift favours none. Metrics come from the
run records and traces: see :mod:`fleet.loadtest.report`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.demo.order_api import OrderAPI
from fleet.demo.speech import speak_to_file
from fleet.deploy.local import LocalFleet, free_port
from fleet.loadtest.arrivals import Arrivals, Job, jobs
from fleet.loadtest.deployments import Deployment, config_for, deployments, write_config
from fleet.loadtest.report import summarize, write
from fleet.loadtest.result import Result, answer_agreement, row
from fleet.messaging.app import create_app
from fleet.paths import EXAMPLES
from fleet.sdk.registry import Registry, registry
from fleet.workflow.model import WorkflowSpec


def run_deployment(
    dep: Deployment,
    rnd: int,
    arrivals: Arrivals,
    mix: list[Job],
    ctx: dict[str, str],
    workdir: Path,
    tick: Callable[[], None],
    warm: bool = True,
) -> Result:
    """Start this deployment's fleet, warm it up (unless not ``warm``: then the measured
    runs pay every model load), run the workload, stop it."""

    cfg = config_for(dep, ctx["broker"], ctx["data_dir"])
    cfg_file = workdir / f"fleet-{dep.name}.yaml"
    write_config(cfg, cfg_file)
    fleet = LocalFleet(
        cfg,
        [],
        False,
        workdir / dep.name,
        "WARNING",
        say=lambda s: None,
        env=deployment_env(cfg_file, ctx),
    )
    fleet.start(wait=120)
    try:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        if ctx.get("audio_file"):  # by reference, as a remote client's; each fleet has its
            ctx["audio"] = client.upload(ctx["audio_file"])  # own Redis: upload it again
        if warm:
            warm_up(client, cfg, dep, mix, ctx)
        return _drive(client, dep, rnd, arrivals, mix, ctx, tick)
    finally:
        fleet.stop()


def warm_up(
    client: Any, cfg: FleetConfig, dep: Deployment, mix: list[Job], ctx: dict[str, str]
) -> None:
    """Every process of every class runs each workflow once before the measurement: a
    process's first run pays for caches (llama.cpp reuses the prompt prefix it evaluated
    last; connections) that the measured runs would otherwise pay at random, depending on
    which process a policy happens to pick."""

    registry.load_plugins()
    for job in mix:
        client.submit(job.spec(), job.inputs(ctx), policy=dep.policy).get(timeout=300)
        for name, spec in dep.classes.items():
            if not spec.compute_processes:
                continue
            pinned = job.spec()
            _prefer(pinned, name, cfg, registry)
            runs = [
                client.submit(pinned, job.inputs(ctx), policy="static")
                for _ in range(spec.compute_processes)
            ]
            for run in runs:  # at once: each of the class's processes takes one
                run.get(timeout=300)


def _prefer(spec: WorkflowSpec, cls: str, cfg: FleetConfig, registry: Registry) -> None:
    for node in spec.nodes:
        if node.workflow is not None:
            _prefer(node.workflow, cls, cfg, registry)
        elif node.op and cls in registry.get(node.op).eligible(cfg.classes):
            node.prefer = cls


def _drive(
    client: Any,
    dep: Deployment,
    rnd: int,
    arrivals: Arrivals,
    mix: list[Job],
    ctx: dict[str, str],
    tick: Callable[[], None],
) -> Result:
    schedule = arrivals.schedule(mix)
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
        if arrivals.rate:
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:  # closed loop: keep `concurrency` in flight
            while len(pending) >= (arrivals.concurrency or 1):
                pending = [(j, h) for j, h in pending if h.status() == "running"]
                time.sleep(0.01)
        handle = client.submit(specs[job.name], job.inputs(ctx), policy=dep.policy, sla_s=job.sla_s)
        handles.append((job, handle))
        pending.append((job, handle))
    for job, handle in handles:
        info = handle._store.wait(handle.id, 300)  # a stuck run is reported, not waited on
        result.runs.append(row(job, handle, info))
        tick()
    result.ended = max([r["finished_at"] or 0 for r in result.runs] + [time.time()])
    return result


def deployment_env(cfg_file: Path, ctx: dict[str, str]) -> dict[str, str]:
    """The workers' configuration: the deployment's file, plus the example order API as the
    one HTTP endpoint tools may call."""
    env = {"FLEET_CONFIG": str(cfg_file)}
    if ctx.get("api"):
        env["FLEET_HTTP_ALLOW"] = ctx["api"].removeprefix("http://")
    return env


def prepare(workdir: Path, quick: bool) -> dict[str, str]:
    """Inputs every deployment shares: broker address, data dir, question audio."""

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

    cfg = config_for(deployments()[0], ctx["broker"], ctx["data_dir"])
    cfg_file = workdir / "fleet-index.yaml"
    write_config(cfg, cfg_file)
    env = deployment_env(cfg_file, ctx)
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
    arrivals: Arrivals,
    quick: bool,
    rounds: int,
    names: list[str],
    out: Path,
    say: Callable[[str], None],
    tick: Callable[[], None],
) -> tuple[list[dict[str, Any]], list[Path], dict[str, Any]]:
    """The whole benchmark: shared inputs, every deployment per round, then the report."""
    mix = jobs("quick" if quick else "full")
    deps = {d.name: d for d in deployments() if d.name in names}
    results: list[Result] = []
    began = time.time()
    with session(out, quick, say) as (workdir, ctx):
        for rnd, name in order_rounds(list(deps), rounds):
            say(f"round {rnd + 1}/{rounds}: {name} ({deps[name].description})")
            results.append(run_deployment(deps[name], rnd, arrivals, mix, ctx, workdir, tick))
    rows = [summarize(n, [r for r in results if r.deployment == n]) for n in deps]
    meta = {
        "workload": {
            k: getattr(arrivals, k) for k in ("rate", "concurrency", "count", "duration_s", "seed")
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
