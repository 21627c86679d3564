"""Prefill/decode split against one step, on a local fleet, in one run.

A local fleet of the `gpu`, `npu-lite` and `io` classes (llama.cpp on the CPU here). The
same `llm.generate` node -- Gemma 3 270M Q4_K_M, a ~450-token prompt whose first line differs
per run, `--tokens` greedy tokens -- runs unsplit on `gpu` and split (`split: {prefill:
gpu, decode: npu-lite}`), alternating, `--rounds` times each. Reported: run latency
(submission to result, medians), the KV state handed over per prompt token, and the
handover time (fetch and restore on the decode side). The texts must match.

    python bench/llm_split.py [--rounds 5] [--tokens 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CONTEXT = (
    "Orders placed before 2 pm on a working day leave our warehouse the same day. Standard "
    "shipping takes 3 to 5 working days and costs 4.90; it is free for orders over 50. "
)


def _spec(tokens: int) -> Any:
    from fleet.workflow.loader import spec_from_data

    params = {"max_tokens": tokens}
    node = {"op": "llm.generate", "inputs": {"prompt": "inputs.p"}, "params": params}
    split = {"prefill": "gpu", "decode": "npu-lite"}
    return {
        "whole": spec_from_data(
            {
                "name": "whole",
                "inputs": ["p"],
                "nodes": [{"name": "gen", **node, "classes": ["gpu"]}],
                "outputs": {"text": "gen.text", "prompt_tokens": "gen.prompt_tokens"},
            }
        ),
        "split": spec_from_data(
            {
                "name": "split",
                "inputs": ["p"],
                "nodes": [{"name": "gen", **node, "split": split}],
                "outputs": {
                    "text": "gen.text",
                    "prompt_tokens": "gen.prompt_tokens",
                    "kv_bytes": "gen.prefill_state_bytes",
                    "handover_s": "gen.handover_s",
                },
            }
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from fleet.client.client import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port
    from fleet.messaging.app import create_app

    cfg = load_config()
    cfg = cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    specs = _spec(args.tokens)
    lat: dict[str, list[float]] = {"whole": [], "split": []}
    kv_per_token, handover, same = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalFleet(cfg, ["gpu", "npu-lite", "io"], False, Path(tmp), "WARNING", print)
        with local:
            client = Fleet(app=create_app(cfg), cfg=cfg)
            for name in ("whole", "split"):  # warm-up: both processes load the model
                client.submit(specs[name], {"p": "Hello"}).get(timeout=600)
            for i in range(args.rounds):
                prompt = f"Ticket {i}.\nContext:\n{CONTEXT * 10}\nQuestion: when?\nAnswer:"
                texts = {}
                for name in ("whole", "split") if i % 2 == 0 else ("split", "whole"):
                    start = time.perf_counter()
                    out = client.submit(specs[name], {"p": prompt}).get(timeout=600)
                    lat[name].append(time.perf_counter() - start)
                    texts[name] = out["text"]
                    if name == "split":
                        kv_per_token.append(out["kv_bytes"] / out["prompt_tokens"])
                        handover.append(out["handover_s"])
                same += texts["whole"] == texts["split"]
    doc = {
        "rounds": args.rounds,
        "tokens": args.tokens,
        "latency_s": {k: round(statistics.median(v), 3) for k, v in lat.items()},
        "split_over_whole": round(
            statistics.median(lat["split"]) / statistics.median(lat["whole"]), 3
        ),
        "kv_bytes_per_prompt_token": round(statistics.median(kv_per_token)),
        "handover_ms": round(statistics.median(handover) * 1000, 1),
        "same_text": f"{same}/{args.rounds}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(doc, indent=1) if args.json else doc)


if __name__ == "__main__":
    main()
