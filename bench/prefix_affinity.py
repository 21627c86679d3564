"""Prefix affinity on a local fleet of two batching gpu workers: on against off, in one run.

Two `gpu`-class workers (thread pools batching `--slots` sequences each; on a CPU host
llama.cpp runs on the CPU, and the two share its cores: half the cores' threads each) and
the `io` control class. Gemma 3 270M Q4_K_M, greedy decoding. The workload is agent-like:
`--runs` runs at once, each of `--rounds` LLM rounds; a round's prompt is built on the io
class (llm.prompt) from the run's own ~450-token context and the last answer, then
generated on gpu (16 new tokens). No run shares another's prefix (each context starts with
its own ticket line).

Each variant gets a fresh fleet with the same settings but `prefix_affinity`; `--repeat`
batches of runs each, after one warm-up batch that loads the model in both workers. Per
variant: the later rounds' (2..R) step time, median and p95; the share of them that reused
their run's context (`cached_tokens` >= 32; a round may reuse it from the round before on
another worker than the first); the share that ran on their run's first worker; the wall
time per batch. `later_step_ratio` = off / on of the later rounds' median step time;
`batch_wall_ratio` = off / on of the mean wall time of a batch.

    python bench/prefix_affinity.py [--runs 4] [--rounds 3] [--slots 4] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

CONTEXT = (
    "Orders placed before 2 pm on a working day leave our warehouse the same day. Standard "
    "shipping takes 3 to 5 working days and costs 4.90; it is free for orders over 50. "
)
MIN_REUSE = 32  # the batch's least prefix worth reusing


def agent(rounds: int) -> Any:
    from fleet import Workflow

    wf = Workflow("affinity-bench", inputs=["context", "q"])
    question: Any = wf.input("q")
    for i in range(1, rounds + 1):
        p = wf.step(
            f"p{i}",
            "llm.prompt",
            instruction=wf.input("context"),
            question=question,
            classes=["io"],
        )
        g = wf.step(
            f"g{i}", "llm.generate", prompt=p["prompt"], max_tokens=16, stop=[], classes=["gpu"]
        )
        question = g["text"]
    wf.output("answer", question)
    return wf


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _batch(client: Any, wf: Any, runs: int) -> tuple[list[Any], float]:
    start = time.perf_counter()
    handles = [
        client.submit(
            wf, {"context": f"Ticket {uuid.uuid4().hex[:8]}.\n{CONTEXT * 10}", "q": f"order {i}"}
        )
        for i in range(runs)
    ]
    for h in handles:
        h.get(timeout=900)
    return handles, time.perf_counter() - start


def variant(affinity: bool, args: argparse.Namespace) -> dict[str, Any]:
    from fleet.client.client import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port
    from fleet.messaging.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "fleet.toml"
        threads = max(1, (os.cpu_count() or 1) // 2)  # the two workers share the cores
        conf.write_text(
            f"prefix_affinity = {str(affinity).lower()}\n"
            f'[classes.gpu]\npool = "threads"\nconcurrency = {args.slots}\nworkers = 2\n'
            f"threads = {threads}\n"
        )
        env = {"FLEET_CONFIG": str(conf)}
        cfg = load_config(conf)
        cfg = cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
        wf = agent(args.rounds)
        later, reused, same, walls = [], 0, 0, []
        with LocalFleet(cfg, ["gpu", "io"], False, Path(tmp), "WARNING", lambda s: None, env):
            client = Fleet(app=create_app(cfg), cfg=cfg)
            _batch(client, wf, 2 * args.slots)  # warm-up: both workers load the model
            for rep in range(args.repeat):
                handles, wall = _batch(client, wf, args.runs)
                walls.append(wall)
                for h in handles:
                    steps = {e.node: e for e in h.trace() if e.node.startswith("g")}
                    outs = client.dispatcher.store.state(h.id)
                    for i in range(2, args.rounds + 1):
                        later.append(float(steps[f"g{i}"].run_s))
                        reused += outs[f"g{i}"]["cached_tokens"] >= MIN_REUSE
                        same += steps[f"g{i}"].worker == steps["g1"].worker
                print(
                    f"affinity {'on' if affinity else 'off'}: batch {rep + 1}/{args.repeat} "
                    f"{wall:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    n = len(later)
    return {
        "later_step_s": {"p50": round(statistics.median(later), 3), "p95": _pct(later, 0.95)},
        "reused_share": round(reused / n, 3),
        "same_worker_share": round(same / n, 3),
        "batch_wall_s": [round(w, 2) for w in walls],
        "later_rounds": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="Runs at once in a batch.")
    parser.add_argument("--rounds", type=int, default=3, help="LLM rounds per run.")
    parser.add_argument("--slots", type=int, default=4, help="Sequences per gpu worker.")
    parser.add_argument("--repeat", type=int, default=2, help="Measured batches per variant.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = parser.parse_args()
    on = variant(True, args)
    off = variant(False, args)
    doc = {
        "on": on,
        "off": off,
        "later_step_ratio": round(off["later_step_s"]["p50"] / on["later_step_s"]["p50"], 2),
        "batch_wall_ratio": round(
            statistics.mean(off["batch_wall_s"]) / statistics.mean(on["batch_wall_s"]), 2
        ),
        "settings": vars(args),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(
            f"later rounds' step time: {doc['later_step_ratio']:.2f}x shorter with affinity "
            f"(on {on['later_step_s']}, off {off['later_step_s']}); reused "
            f"{on['reused_share']:.0%} vs {off['reused_share']:.0%}"
        )


if __name__ == "__main__":
    main()
