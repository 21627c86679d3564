"""Capacity: the highest arrival rate the local fleet sustains with every job's p95 within
its SLA, with the `gpu` class as preset (prefork x 1: one step, one sequence, at a time) and
batching (a thread pool of 8 sequences in one continuous batch), in one run.

Both variants are the default heterogeneous classes, models preloaded, the default
`preferred` policy, each started fresh and warmed up per rate (`fleet bench`'s harness).
Open loop: Poisson arrivals (seeded) at each rate of the ladder for `--duration` seconds;
at each rate the two variants run back to back, in alternating order. A variant's ladder
stops at its first rate that fails: a failed run, or a job whose p95 is over its SLA.

    python bench/capacity.py [--mix voice|full] [--rates 0.3,0.45,0.6,0.8,1.0]
                             [--duration 60] [--json] [--out bench/results/capacity]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def variants() -> dict[str, Any]:
    from fleet.loadtest.deployments import Deployment, deployments

    base = next(d for d in deployments() if d.name == "least-latency").classes
    batched = dict(base)
    batched["gpu"] = base["gpu"].model_copy(update={"pool": "threads", "concurrency": 8})
    return {
        "one-at-a-time": Deployment("one-at-a-time", "preferred", dict(base), "gpu prefork x 1"),
        "batched": Deployment("batched", "preferred", batched, "gpu threads x 8 (batching)"),
    }


def judge(result: Any, mix: list[Any]) -> dict[str, Any]:
    """Per job: runs, failures, p50/p95 against its SLA; and whether the rate held."""
    jobs: dict[str, Any] = {}
    held = True
    for job in mix:
        runs = [r for r in result.runs if r["job"] == job.name]
        ok = [r["latency_s"] for r in runs if r["status"] == "succeeded" and r["latency_s"]]
        p95 = float(np.percentile(ok, 95)) if ok else float("inf")
        failed = len(runs) - len(ok)
        jobs[job.name] = {
            "runs": len(runs),
            "failed": failed,
            "p50_s": round(float(np.percentile(ok, 50)), 3) if ok else None,
            "p95_s": round(p95, 3) if ok else None,
            "sla_s": job.sla_s,
        }
        held = held and failed == 0 and p95 <= job.sla_s
    span = max(result.ended - result.started, 1e-9)
    done = sum(1 for r in result.runs if r["status"] == "succeeded")
    return {"held": held, "jobs": jobs, "throughput_per_s": round(done / span, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", default="voice", choices=("voice", "full"))
    parser.add_argument("--rates", default="0.3,0.45,0.6,0.8,1.0")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity")
    args = parser.parse_args()

    from fleet.loadtest.arrivals import Arrivals, jobs
    from fleet.loadtest.harness import run_deployment, session

    mix = [j for j in jobs("full") if args.mix == "full" or j.name == args.mix]
    if args.mix == "voice":
        mix = [replace(j, weight=1.0) for j in mix]
    deps = variants()
    rates = [float(r) for r in args.rates.split(",")]
    ladder: dict[str, list[dict[str, Any]]] = {name: [] for name in deps}
    began = time.time()
    with session(args.out, False, lambda s: print(s, file=sys.stderr, flush=True)) as (wd, ctx):
        for i, rate in enumerate(rates):
            order = list(deps) if i % 2 == 0 else list(reversed(deps))
            for name in order:
                if ladder[name] and not ladder[name][-1]["held"]:
                    continue  # failed at a lower rate
                arrivals = Arrivals(rate=rate, duration_s=args.duration, seed=args.seed)
                result = run_deployment(deps[name], i, arrivals, mix, ctx, wd, lambda: None)
                verdict = {"rate": rate, **judge(result, mix)}
                ladder[name].append(verdict)
                print(f"{name} at {rate}/s: {json.dumps(verdict)}", file=sys.stderr, flush=True)
    capacity = {
        name: max((v["rate"] for v in steps if v["held"]), default=None)
        for name, steps in ladder.items()
    }
    doc = {
        "mix": [{"job": j.name, "weight": j.weight, "sla_s": j.sla_s} for j in mix],
        "duration_s": args.duration,
        "capacity_per_s": capacity,
        "ladder": ladder,
        "variants": {n: d.description for n, d in deps.items()},
        "seconds": round(time.time() - began, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"capacity_{args.mix}.json").write_text(json.dumps(doc, indent=1))
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        for name, cap in capacity.items():
            print(f"{name:>14}: sustains {cap}/s" if cap else f"{name:>14}: none of {rates}")


if __name__ == "__main__":
    main()
