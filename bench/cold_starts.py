"""Cold starts: the voice agent on a fresh default fleet (no model preloaded, no warm-up),
one run in flight, under `preferred`, `least-latency` counting only service time, and
`least-latency` counting the model loads a step would wait for (docs/routing.md).

Each variant starts its own fleet with the default classes and runs ``--count`` voice-agent
runs one after another; p50/p95 from submission to end, the model-load seconds the steps
paid (their trace's ``cold_s``), and the classes the model steps ran on.

    python bench/cold_starts.py [--count 8] [--rounds 1] [--json] [--out bench/results/cold]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def variants() -> dict[str, Any]:
    from fleet.config import default_classes
    from fleet.loadtest.deployments import Deployment

    classes = default_classes()  # as `fleet up` starts them: nothing preloaded
    return {
        "preferred": Deployment("preferred", "preferred", classes, "the default policy"),
        "least-latency, service only": Deployment(
            "least-latency-service",
            "least-latency",
            classes,
            "least-latency counting service time only",
            {"count_cold_starts": False},
        ),
        "least-latency": Deployment(
            "least-latency", "least-latency", classes, "least-latency counting model loads"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cold")
    args = parser.parse_args()

    from fleet.loadtest.arrivals import Arrivals, jobs
    from fleet.loadtest.harness import order_rounds, run_deployment, session

    mix = [replace(j, weight=1.0) for j in jobs("full") if j.name == "voice"]
    deps = variants()
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in deps}
    began = time.time()
    with session(args.out, False, lambda s: print(s, file=sys.stderr, flush=True)) as (wd, ctx):
        for rnd, name in order_rounds(list(deps), args.rounds):
            arrivals = Arrivals(concurrency=1, count=args.count, seed=7)
            result = run_deployment(
                deps[name], rnd, arrivals, mix, ctx, wd, lambda: None, warm=False
            )
            ok = [r for r in result.runs if r["status"] == "succeeded" and r["latency_s"]]
            lat = [r["latency_s"] for r in ok]
            cold = [c for r in result.runs for c in r.get("cold_s", [])]
            where = Counter(c for r in result.runs for c in r.get("model_classes", []))
            verdict = {
                "runs": len(result.runs),
                "failed": len(result.runs) - len(ok),
                "p50_s": round(float(np.percentile(lat, 50)), 3) if lat else None,
                "p95_s": round(float(np.percentile(lat, 95)), 3) if lat else None,
                # the fleet's very first run pays every import and load whatever the policy
                "p95_after_first_s": round(float(np.percentile(lat[1:], 95)), 3)
                if len(lat) > 1
                else None,
                "max_after_first_s": round(max(lat[1:]), 3) if len(lat) > 1 else None,
                "latencies_s": [round(x, 3) for x in lat],
                "model_loads": len(cold),
                "model_load_s": round(sum(cold), 3),
                "model_steps_on": dict(where),
            }
            found[name].append(verdict)
            print(f"{name}: {json.dumps(verdict)}", file=sys.stderr, flush=True)
    doc = {
        "count": args.count,
        "rounds": args.rounds,
        "variants": {n: d.description for n, d in deps.items()},
        "results": found,
        "seconds": round(time.time() - began, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_starts.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1) if args.json else json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
