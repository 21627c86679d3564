"""Runs that wait, measured on a local fleet (Redis + one cpu and one io worker).

1. **Parked runs hold nothing.** ``--parked`` runs of a one-node ``wait.signal`` workflow are
   submitted and left waiting: queue depths and busy worker slots (from the heartbeats) while
   they wait, and the Redis memory each adds *beyond its run record* -- the wait itself (its
   field in the run's waits hash, with a timeout its member of the fleet-wide due set) -- by
   ``MEMORY USAGE``, against the run record's own keys.
2. **A signal resumes its run**: on an idle fleet, ``--signals`` parked runs are signalled one
   at a time; from the call to the run's outputs read back (``RunHandle.get``), p50 and p95.
3. **A streamed token reaches its follower** (``--llm``): an ``llm.generate`` step with
   ``stream: true`` on a gpu-class worker, followed; for each text event, from its append on
   the worker (its ``at``) to its arrival at the client, p50 and p95 (same host, one clock).
   The step's thread looks for new text every 20 ms (workers/ops/llm_stream.py): a token
   waits up to that long before it is appended.

    python bench/waits.py [--parked 10000] [--signals 200] [--llm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parked(client: Any, count: int, broker: Any, cfg: Any) -> dict[str, Any]:
    from fleet import Workflow
    from fleet.constants import (
        RUN_KEY,
        RUN_OUTPUTS_KEY,
        RUN_TRACE_KEY,
        RUN_WAITS_KEY,
        WAITS_DUE_KEY,
        WORKER_INFO_KEY,
    )

    wf = Workflow("parked", inputs=["n"])
    go = wf.step("go", "wait.signal", name="go", timeout_s=86400)
    wf.output("data", go["data"])
    before = int(broker.info("memory")["used_memory"])
    start = time.monotonic()
    runs = [client.submit(wf, {"n": i}) for i in range(count)]
    submit_s = time.monotonic() - start
    deadline = time.monotonic() + 120
    while broker.zcard(WAITS_DUE_KEY) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.5)  # two heartbeats: what the workers hold now
    after = int(broker.info("memory")["used_memory"])
    infos = [json.loads(v) for v in broker.hvals(WORKER_INFO_KEY)]
    queued = sum(int(broker.llen(q)) for s in cfg.classes.values() for q in s.queues)
    sample = runs[:: max(1, count // 200)]
    wait_bytes = [int(broker.memory_usage(RUN_WAITS_KEY.format(id=r.id)) or 0) for r in sample]
    record = [
        sum(
            int(broker.memory_usage(k.format(id=r.id)) or 0)
            for k in (RUN_KEY, RUN_OUTPUTS_KEY, RUN_TRACE_KEY)
        )
        for r in sample
    ]
    waiting = max(1, int(broker.zcard(WAITS_DUE_KEY)))
    due = int(broker.memory_usage(WAITS_DUE_KEY, samples=0) or 0) / waiting
    return {
        "runs": count,
        "waiting": int(broker.zcard(WAITS_DUE_KEY)),
        "submit_runs_per_s": round(count / submit_s, 1),
        "queued_messages": queued + int(broker.hlen("unacked")),
        "busy_slots": sum(int(i.get("busy", 0)) for i in infos),
        "wait_bytes_per_run": round(statistics.mean(wait_bytes) + due, 1),
        "of_which_due_set": round(due, 1),
        "run_record_bytes": round(statistics.mean(record), 1),
        "used_memory_per_run": round((after - before) / count, 1),
        "handles": runs,
    }


def resume_latency(client: Any, runs: list[Any], count: int) -> dict[str, Any]:
    took = []
    for run in runs[:count]:
        start = time.perf_counter()
        client.signal(run.id, "go", {"ok": True})
        out = run.get(timeout=30)
        took.append((time.perf_counter() - start) * 1000)
        assert out == {"data": {"ok": True}}, out
        time.sleep(0.02)  # an idle fleet between signals
    return {
        "signals": len(took),
        "p50_ms": round(_p(took, 0.5), 2),
        "p95_ms": round(_p(took, 0.95), 2),
    }


def token_latency(client: Any) -> dict[str, Any]:
    from fleet import Workflow

    wf = Workflow("streamed", inputs=["p"])
    g = wf.step("g", "llm.generate", prompt=wf.input("p"), max_tokens=64, stream=True)
    wf.output("text", g["text"])
    prompt = "Question: Why do customers return blenders?\nAnswer:"
    client.submit(wf, {"p": prompt}).get(timeout=300)  # the model loads (not measured)
    late: list[float] = []
    pieces = 0
    for _ in range(3):
        run = client.submit(wf, {"p": prompt}, follow=True)
        for event in run.events(timeout=300):
            if event["event"] == "text":
                late.append((time.time() - float(event["at"])) * 1000)
                pieces += 1
    return {
        "pieces": pieces,
        "p50_ms": round(_p(late, 0.5), 2),
        "p95_ms": round(_p(late, 0.95), 2),
        "poll_ms": 20,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from fleet import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet

    workdir = args.out / "waits-work"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh Redis (its append-only file is here)
    workdir.mkdir(parents=True)
    cfg = load_config()
    classes = ["cpu", "io"] + (["gpu"] if args.llm else [])
    fleet = LocalFleet(
        cfg, classes, flower=False, workdir=workdir, loglevel="WARNING", say=lambda _: None
    )
    try:
        fleet.start()
        client = Fleet()
        broker = redis.Redis.from_url(cfg.broker_url, decode_responses=True)
        found = parked(client, args.parked, broker, cfg)
        handles = found.pop("handles")
        result: dict[str, Any] = {"parked": found}
        result["resume"] = resume_latency(client, handles, args.signals)
        if args.llm:
            result["tokens"] = token_latency(client)
        result["cpus"] = os.cpu_count()
        result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return result
    finally:
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--llm", action="store_true", help="also a streamed LLM step (gpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if "FLEET_BROKER_URL" not in os.environ:
        from fleet.deploy.local import free_port

        os.environ["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "waits.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
