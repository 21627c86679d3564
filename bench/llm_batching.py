"""Continuous batching and prefix reuse of `llm.generate`, on a local fleet, in one run.

A local fleet of one `gpu`-class worker, batching (a thread pool whose concurrency is the
LLM batch: N; on a CPU host llama.cpp runs on the CPU) and the `io` control class. Gemma 3 270M
Q4_K_M, greedy decoding, `--tokens` new tokens per step, a ~60-token prompt that differs in
its first line (no prefix is shared).

- Batching: N one-step runs submitted at once (N concurrent steps in the batch) against the
  same N runs one after another, on the same worker, rounds alternating; `speedup` is the
  ratio of tokens/s (total new tokens over wall time), medians over rounds.
- Prefix reuse (`--prefix`): an agent loop's second round, whose prompt starts with the
  first round's (a ~450-token context, the question, the answer), against a cold round of
  the same length whose first line differs; `max_tokens=1`, so the step's run time is its
  time to the first token. `ttft_ratio` = cold / warm, medians.

    python bench/llm_batching.py --concurrency 8 [--rounds 3] [--tokens 48] [--prefix] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTION = (
    "Customer {i} asks: where is my order {n}? It has not arrived yet and I am worried. "
    "Please answer briefly and politely.\nAnswer:"
)
CONTEXT = (
    "Orders placed before 2 pm on a working day leave our warehouse the same day. Standard "
    "shipping takes 3 to 5 working days and costs 4.90; it is free for orders over 50. "
)


def _workflow(tokens: int) -> Any:
    from fleet import Workflow

    wf = Workflow("llm-step", inputs=["p"])
    gen = wf.step(
        "gen", "llm.generate", prompt=wf.input("p"), max_tokens=tokens, stop=[], classes=["gpu"]
    )
    wf.output("tokens", gen["tokens"])
    wf.output("cached", gen["cached_tokens"])
    wf.output("text", gen["text"])
    return wf


def _step_s(run: Any) -> float:
    (step,) = [e for e in run.trace() if e.node == "gen" and e.status == "succeeded"]
    return float(step.run_s)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def batching(client: Any, n: int, tokens: int, rounds: int) -> dict[str, Any]:
    wf = _workflow(tokens)
    seq_tps, bat_tps, seq_steps, bat_steps = [], [], [], []
    serial = 0
    for rnd in range(rounds):
        prompts = [QUESTION.format(i=serial + i, n=1040 + serial + i) for i in range(2 * n)]
        serial += 2 * n
        start, made = time.perf_counter(), 0
        for p in prompts[:n]:
            run = client.submit(wf, {"p": p})
            made += run.get(timeout=600)["tokens"]
            seq_steps.append(_step_s(run))
        seq_tps.append(made / (time.perf_counter() - start))
        start = time.perf_counter()
        runs = [client.submit(wf, {"p": p}) for p in prompts[n:]]
        made = sum(r.get(timeout=600)["tokens"] for r in runs)
        bat_tps.append(made / (time.perf_counter() - start))
        bat_steps += [_step_s(r) for r in runs]
        print(
            f"round {rnd + 1}/{rounds}: one at a time {seq_tps[-1]:.1f} tokens/s, "
            f"{n} at once {bat_tps[-1]:.1f} tokens/s",
            file=sys.stderr,
            flush=True,
        )
    seq, bat = statistics.median(seq_tps), statistics.median(bat_tps)
    return {
        "concurrency": n,
        "tokens": tokens,
        "rounds": rounds,
        "tokens_per_s": {"one_at_a_time": round(seq, 1), "concurrent": round(bat, 1)},
        "speedup": round(bat / seq, 3),
        "step_s": {
            "one_at_a_time": {"p50": _pct(seq_steps, 0.5), "p95": _pct(seq_steps, 0.95)},
            "concurrent": {"p50": _pct(bat_steps, 0.5), "p95": _pct(bat_steps, 0.95)},
        },
    }


def prefix_reuse(client: Any, rounds: int) -> dict[str, Any]:
    wf = _workflow(24)
    first_token = _workflow(1)
    cold_s, warm_s, reused, prompt_len = [], [], [], 0
    for rnd in range(rounds):
        opening = f"Ticket {rnd}.\nContext:\n{CONTEXT * 10}\n"
        round1 = opening + QUESTION.format(i=rnd, n=2000 + rnd)
        answer = client.submit(wf, {"p": round1}).get(timeout=600)["text"]
        follow = f"{round1} {answer}\nCustomer: and can I get a refund?\nAnswer:"
        warm = client.submit(first_token, {"p": follow})
        reused.append(warm.get(timeout=600)["cached"])
        warm_s.append(_step_s(warm))
        cold = client.submit(first_token, {"p": f"Other ticket {rnd}.\n{follow}"})
        cold.get(timeout=600)
        cold_s.append(_step_s(cold))
        prompt_len = len(follow) // 4
        print(
            f"prefix round {rnd + 1}/{rounds}: cold {cold_s[-1]:.3f} s, "
            f"warm {warm_s[-1]:.3f} s ({reused[-1]} tokens reused)",
            file=sys.stderr,
            flush=True,
        )
    cold, warm = statistics.median(cold_s), statistics.median(warm_s)
    return {
        "first_token_s": {"cold": round(cold, 4), "warm": round(warm, 4)},
        "ttft_ratio": round(cold / warm, 2),
        "reused_tokens": min(reused),
        "prompt_tokens_about": prompt_len,
        "samples": {"cold": cold_s, "warm": warm_s},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8, help="Steps at once (N).")
    parser.add_argument("--tokens", type=int, default=48, help="New tokens per step.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are printed.")
    parser.add_argument("--prefix", action="store_true", help="Also measure prefix reuse.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = parser.parse_args()

    from fleet.client.client import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port
    from fleet.messaging.app import create_app

    cfg = load_config()
    cfg = cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    update = {"pool": "threads", "concurrency": max(args.concurrency, 1)}
    gpu = cfg.classes["gpu"].model_copy(update=update)
    cfg.classes["gpu"] = gpu
    env = {"FLEET_CLASS_GPU_POOL": "threads", "FLEET_CLASS_GPU_CONCURRENCY": str(gpu.concurrency)}
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalFleet(cfg, ["gpu", "io"], False, Path(tmp), "WARNING", lambda s: None, env)
        with local:
            client = Fleet(app=create_app(cfg), cfg=cfg)
            client.submit(_workflow(4), {"p": "Hello"}).get(timeout=600)  # loads the model
            doc: dict[str, Any] = {
                "batching": batching(client, args.concurrency, args.tokens, args.rounds),
                "gpu_class": f"{gpu.pool} x {gpu.concurrency}",
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            if args.prefix:
                doc["prefix"] = prefix_reuse(client, args.rounds)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        b = doc["batching"]
        print(
            f"{args.concurrency} concurrent llm.generate steps: {b['speedup']:.2f}x the tokens/s "
            f"of one at a time ({b['tokens_per_s']})"
        )
        if args.prefix:
            p = doc["prefix"]
            print(
                f"prefix reuse: first token {p['ttft_ratio']:.1f}x sooner "
                f"({p['first_token_s']}, {p['reused_tokens']} tokens reused)"
            )


if __name__ == "__main__":
    main()
