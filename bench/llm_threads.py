"""An LLM step on the default local fleet against bare llama.cpp, in one run.

Bare: llama-cpp-python in this process with one thread per core. Fleet: a one-step
`llm.generate` workflow pinned to the `gpu` class (on a CPU host its worker runs llama.cpp on
the CPU) on a local fleet of every default class, once with the threads each class now gets
(`native_threads`) and once with the old rule (cores / all compute slots, 1 here). Same model
(Gemma 3 270M Q4_K_M), prompt and 48 greedy tokens; tokens/s from the step's run time.
Rounds alternate bare and fleet; medians.

    python bench/llm_threads.py [--runs 5] [--out bench/results]
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
CONTEXT = (
    "Orders placed before 2 pm on a working day leave our warehouse the same day. Standard "
    "shipping takes 3 to 5 working days and costs 4.90; it is free for orders over 50. "
)
# A retrieval-sized prompt (about 400 tokens): prefill is where threads matter most.
PROMPT = f"Context:\n{CONTEXT * 10}\nQuestion: When will my order arrive?\nAnswer:"
TOKENS = 48


def _prompt(i: int) -> str:
    """A different first line each time: llama.cpp reuses an identical prompt prefix's KV
    cache, which would hide the prefill (the part that needs the cores)."""
    return f"Ticket {i}.\n{PROMPT}"


def bare_tokens_per_s(path: str, runs: int) -> list[float]:
    from llama_cpp import Llama

    cores = os.cpu_count() or 1
    llm = Llama(model_path=path, n_ctx=2048, n_threads=cores, n_threads_batch=cores, verbose=False)
    llm.create_completion(_prompt(-1), max_tokens=4, temperature=0.0)  # warm-up
    out = []
    for i in range(runs):
        start = time.perf_counter()
        prompt = _prompt(i)
        done = llm.create_completion(prompt, max_tokens=TOKENS, temperature=0.0, stop=[])
        out.append(done["usage"]["completion_tokens"] / (time.perf_counter() - start))
    del llm
    return out


def fleet_tokens_per_s(threads: int | None, runs: int, workdir: Path) -> list[float]:
    from fleet import Workflow
    from fleet.client.client import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port
    from fleet.messaging.app import create_app

    cfg = load_config()
    cfg = cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    env = {"FLEET_CLASS_GPU_THREADS": str(threads)} if threads else {}
    wf = Workflow("llm-step", inputs=["p"])
    gen = wf.step(
        "gen", "llm.generate", prompt=wf.input("p"), max_tokens=TOKENS, stop=[], classes=["gpu"]
    )
    wf.output("tokens", gen["tokens"])
    local = LocalFleet(cfg, [], False, workdir, "WARNING", say=lambda s: None, env=env)
    with local:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        client.submit(wf, {"p": _prompt(-1)}).get(timeout=600)  # warm-up: loads the model
        out = []
        for i in range(runs):
            run = client.submit(wf, {"p": _prompt(i)})
            tokens = run.get(timeout=600)["tokens"]
            (step,) = [e for e in run.trace() if e.node == "gen" and e.status == "succeeded"]
            out.append(tokens / step.run_s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from workers.ops.models import gguf_path

    path = str(gguf_path("gemma3-270m"))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[float]] = {"bare": [], "fleet": [], "fleet_old": []}
    cores = os.cpu_count() or 1
    old = max(1, cores // 5)  # the old rule: cores / compute slots of the default classes
    for rnd in range(2):
        print(f"round {rnd + 1}/2 ...", flush=True)
        results["bare"] += bare_tokens_per_s(path, args.runs)
        results["fleet"] += fleet_tokens_per_s(None, args.runs, args.out / "llm-threads")
        results["bare"] += bare_tokens_per_s(path, args.runs)
        results["fleet_old"] += fleet_tokens_per_s(old, args.runs, args.out / "llm-threads")
    med = {k: round(statistics.median(v), 1) for k, v in results.items()}
    doc: dict[str, Any] = {
        "tokens_per_s": med,
        "samples": results,
        "fleet_vs_bare": round(med["fleet"] / med["bare"], 3),
        "old_threads_vs_bare": round(med["fleet_old"] / med["bare"], 3),
        "cores": cores,
        "old_threads": old,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"bare llama.cpp ({cores} threads)      {med['bare']:7.1f} tokens/s")
    print(f"fleet gpu class, threads now      {med['fleet']:7.1f} tokens/s")
    print(f"fleet gpu class, old rule ({old})    {med['fleet_old']:7.1f} tokens/s")
    print(
        f"ratio now / bare {doc['fleet_vs_bare']:.3f}; old / bare {doc['old_threads_vs_bare']:.3f}"
    )
    (args.out / "llm_threads.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
