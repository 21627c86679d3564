"""Routing and engine overhead, side by side in one run.

1. The cost of one routing decision with cached fleet state, per policy (median over batches).
2. Dispatch throughput for trivial work on a local fleet (Redis + cpu and io workers):
   one-step fleet workflows (validate, compile, route, run, record) against plain Celery
   sending a trivial task -- alone, and as a two-task chain -- to a fixed queue.
3. Per-hop latency: a 5-step fleet workflow (text.upper, alternating cpu / io) against a
   plain Celery 5-task chain alternating the same two queues, one at a time; milliseconds
   per step (per hop), median over rounds. The same workflow also as its compiled canvas
   (``to_canvas``: a start task, five node tasks, a finish task) and as a workflow signature
   (``wf.s()``: one task starting an engine run). All rounds are interleaved.

    python bench/routing_overhead.py [--tasks 300] [--rounds 3] [--hops 40] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def decision_cost(policies: list[str], n: int = 20000, batches: int = 5) -> dict[str, float]:
    """Microseconds per routing decision with the state cached (no Redis round trip)."""
    from fleet.config import load_config
    from fleet.routing.router import FleetRouter
    from fleet.routing.state import CachedState, FleetState, StateReader, WorkerInfo
    from fleet.sdk.registry import registry

    cfg = load_config(env={})
    workers = {c: [WorkerInfo(f"{c}@h", (c,), 2, "prefork", 1, 0.0, 1)] for c in cfg.classes}
    state = FleetState(workers, {c: 3 for c in cfg.classes}, {}, time.time())

    class Fixed(StateReader):
        def read(self) -> FleetState:
            return state

    registry.load(cfg.op_modules, cfg.op_plugins)
    call = {
        "path": "answer",
        "op": "llm.generate",
        "kind": "model",
        "classes": ["gpu", "npu-lite", "cpu"],
        "args": {"prompt": "Where is my order 1042?", "max_tokens": 32},
        "retries": 0,
        "timeout": None,
        "remaining": 2,
    }
    out = {}
    for policy in policies:
        router = FleetRouter(cfg, CachedState(Fixed(cfg), ttl=3600))
        kwargs = {
            "call": call,
            "run": {"id": "bench", "policy": policy, "sla_s": 5.0, "submitted_at": time.time()},
        }
        per_batch = []
        for _ in range(batches):
            start = time.perf_counter()
            for _ in range(n):
                router("fleet.step", (), kwargs, {})
            per_batch.append((time.perf_counter() - start) / n * 1e6)
        out[policy] = round(statistics.median(per_batch), 2)
    return out


def fleet_round(client: Any, wf: Any, n: int) -> float:
    start = time.perf_counter()
    runs = [client.submit(wf, {"v": i}) for i in range(n)]
    for r in runs:
        r.get(timeout=120)
    return n / (time.perf_counter() - start)


def plain_round(app: Any, n: int, chained: bool) -> float:
    from celery import chain

    start = time.perf_counter()
    if chained:
        results = [
            chain(app.signature("fleet.ping", args=(i,)), app.signature("fleet.ping")).apply_async(
                queue="cpu"
            )
            for i in range(n)
        ]
    else:
        results = [
            app.signature("fleet.ping", args=(i,)).apply_async(queue="cpu") for i in range(n)
        ]
    for r in results:
        r.get(timeout=120)
    return n / (time.perf_counter() - start)


def fleet_hops(client: Any, wf: Any, n: int, steps: int) -> float:
    """Milliseconds per step of a sequential workflow, runs one at a time (median)."""
    per_step = []
    for i in range(n):
        start = time.perf_counter()
        client.submit(wf, {"t": f"x{i}"}).get(timeout=60)
        per_step.append((time.perf_counter() - start) * 1000 / steps)
    return statistics.median(per_step)


def canvas_hops(client: Any, wf: Any, n: int, steps: int, how: str) -> float:
    """Milliseconds per step of the same workflow run as its compiled canvas
    (``to_canvas``), or as a workflow signature (``signature``: one task that starts an
    engine run, settled when it ends); runs one at a time (median)."""
    per_step = []
    for i in range(n):
        inputs = {"t": f"x{i}"}
        start = time.perf_counter()
        make = client.to_canvas if how == "canvas" else client.signature
        make(wf, inputs).apply_async().get(timeout=60)
        per_step.append((time.perf_counter() - start) * 1000 / steps)
    return statistics.median(per_step)


def plain_hops(app: Any, n: int, steps: int) -> float:
    """Milliseconds per hop of a plain chain alternating the cpu and io queues (median)."""
    from celery import chain

    per_hop = []
    for i in range(n):
        sigs = [
            app.signature("fleet.ping", args=(i,) if k == 0 else (), queue=("cpu", "io")[k % 2])
            for k in range(steps)
        ]
        start = time.perf_counter()
        chain(*sigs).apply_async().get(timeout=60)
        per_hop.append((time.perf_counter() - start) * 1000 / steps)
    return statistics.median(per_hop)


def _sequence(steps: int) -> Any:
    from fleet import Workflow

    wf = Workflow("hops", inputs=["t"])
    ref = wf.input("t")
    for k in range(steps):
        ref = wf.step(f"s{k}", "text.upper", text=ref, classes=[("cpu", "io")[k % 2]])["text"]
    wf.output("t", ref)
    return wf


def dispatch(tasks: int, rounds: int, hops: int, workdir: Path) -> dict[str, Any]:
    from fleet import Workflow
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet

    cfg = load_config()
    fleet = LocalFleet(
        cfg, ["cpu", "io"], flower=False, workdir=workdir, loglevel="WARNING", say=lambda s: None
    )
    fleet.start()
    try:
        from fleet.client.client import Fleet

        client = Fleet()
        wf = Workflow("trivial", inputs=["v"])
        step = wf.step("echo", "test.echo", value=wf.input("v"), classes=["cpu"])
        wf.output("v", step["value"])
        seq = _sequence(5)
        fleet_round(client, wf, 20)  # warm-up: imports, connections
        plain_round(client.app, 20, False)
        fleet_hops(client, seq, 5, 5)
        plain_hops(client.app, 5, 5)
        samples: dict[str, list[float]] = {"fleet": [], "plain": [], "plain_chain": []}
        canvas_hops(client, seq, 5, 5, "canvas")
        canvas_hops(client, seq, 5, 5, "signature")
        hop_ms: dict[str, list[float]] = {"fleet": [], "plain": [], "canvas": [], "signature": []}
        for _ in range(rounds):  # interleaved, so drift does not favour one
            samples["fleet"].append(fleet_round(client, wf, tasks))
            samples["plain"].append(plain_round(client.app, tasks, False))
            samples["plain_chain"].append(plain_round(client.app, tasks, True))
            hop_ms["fleet"].append(fleet_hops(client, seq, hops, 5))
            hop_ms["plain"].append(plain_hops(client.app, hops, 5))
            hop_ms["canvas"].append(canvas_hops(client, seq, hops, 5, "canvas"))
            hop_ms["signature"].append(canvas_hops(client, seq, hops, 5, "signature"))
        med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
        hop = {k: round(statistics.median(v), 2) for k, v in hop_ms.items()}
        return {
            "per_second": med,
            "samples": samples,
            "fleet_vs_plain": round(med["fleet"] / med["plain"], 3),
            "fleet_vs_plain_chain": round(med["fleet"] / med["plain_chain"], 3),
            "hop_ms": hop,
            "hop_samples": hop_ms,
            "hop_ratio": round(hop["fleet"] / hop["plain"], 3),
            "canvas_hop_ratio": round(hop["canvas"] / hop["plain"], 3),
            "signature_hop_ratio": round(hop["signature"] / hop["plain"], 3),
        }
    finally:
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hops", type=int, default=40, help="5-step runs per latency round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if "FLEET_BROKER_URL" not in os.environ:
        from fleet.deploy.local import free_port

        os.environ["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    policies = ["static", "preferred", "least-latency", "cost-sla"]
    print("routing decision cost (cached state), microseconds:", flush=True)
    cost = decision_cost(policies)
    for p, us in cost.items():
        print(f"  {p:<14} {us:8.2f} us")
    print(
        f"dispatch: {args.rounds} interleaved rounds of {args.tasks} trivial tasks "
        f"and {args.hops} five-step runs...",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = dispatch(args.tasks, args.rounds, args.hops, args.out / "fleet-work")
    per = result["per_second"]
    print(f"  fleet one-step workflows   {per['fleet']:8.1f} /s")
    print(f"  plain Celery task          {per['plain']:8.1f} /s")
    print(f"  plain Celery 2-task chain  {per['plain_chain']:8.1f} /s")
    print(f"  ratio fleet / plain task   {result['fleet_vs_plain']:.3f}")
    print(f"  ratio fleet / plain chain  {result['fleet_vs_plain_chain']:.3f}")
    hop = result["hop_ms"]
    print(f"  per step, 5-step workflow  {hop['fleet']:8.2f} ms")
    print(f"  per hop, plain 5-chain     {hop['plain']:8.2f} ms")
    print(f"  ratio fleet / plain hop    {result['hop_ratio']:.3f}")
    print(f"  per step, as its canvas    {hop['canvas']:8.2f} ms")
    print(f"  ratio canvas / plain hop   {result['canvas_hop_ratio']:.3f}")
    print(f"  per step, as a signature   {hop['signature']:8.2f} ms")
    print(f"  ratio signature / plain    {result['signature_hop_ratio']:.3f}")
    doc = {
        "decision_us": cost,
        "dispatch": result,
        "tasks": args.tasks,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (args.out / "routing_overhead.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out / 'routing_overhead.json'}")


if __name__ == "__main__":
    main()
