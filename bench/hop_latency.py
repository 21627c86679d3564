"""The fleet's hot path against plain Celery, with and without task events, in one run.

For each setting of ``task_events`` (on: what Flower needs; off), a local fleet (Redis, one
cpu and one io worker) is started with it, and in interleaved rounds:

- **per step**: a 5-step workflow (text.upper, alternating cpu / io) against a plain Celery
  5-task chain alternating the same two queues on the same workers, runs one at a time;
  milliseconds per step (per hop), median over the runs of a round, then over rounds;
- **one-step throughput**: ``--tasks`` one-step workflows (test.echo) against as many plain
  tasks (fleet.ping), all sent at once; per second. Also split in two: the runs that ended
  while the client was still sending (per second of sending: the workers share the machine
  with a client busy sending) and those after (per second from then to the last end);
- **Redis CPU a one-step run**: the broker's own CPU time (``INFO cpu``) over each one-step
  round, per run, fleet against plain -- Redis is the one serial part every worker of a
  fleet shares, so this bounds how many runs a second one Redis carries.

The plain tasks run on the fleet's own workers, with the same settings (events included).
A second baseline, **stock**, is the same chain and the same one-step tasks on stock Celery
(bench/stock_celery.py: kombu's own Redis transport and Celery's own result backend, in
workers of its own configured like the fleet's), on the same Redis: the fleet's app changes
two things under every task it sends or runs, which its plain tasks get too.

    python bench/hop_latency.py [--rounds 3] [--hops 40] [--tasks 300] [--json]

An A/B against older code: ``PYTHONPATH=<its checkout>``. Celery imports a worker's app
with the working directory first on the module path, so this benchmark starts its workers
from its output folder: they import the code its own process imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stock_celery  # noqa: E402
from routing_overhead import _sequence, fleet_hops, fleet_round, plain_hops, plain_round  # noqa: E402


def measure(events: bool, args: argparse.Namespace) -> dict[str, Any]:
    from fleet import Workflow
    from fleet.client.client import Fleet
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port
    from fleet.messaging.app import create_app

    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = load_config().model_copy(update={"broker_url": url, "task_events": events})
    env = {"FLEET_BROKER_URL": url, "FLEET_TASK_EVENTS": "1" if events else "0"}
    workdir = args.out / f"hop-latency-{'events' if events else 'quiet'}"
    workdir.mkdir(parents=True, exist_ok=True)
    # Celery imports the app with the working directory first on the path: started from a
    # checkout, the workers would run its code whatever PYTHONPATH says (an A/B's baseline)
    os.chdir(workdir)
    fleet = LocalFleet(cfg, ["cpu", "io"], False, workdir, "WARNING", lambda _: None, env)
    fleet.start()
    stock = stock_celery.start_workers(url, events, workdir)
    try:
        client = Fleet(create_app(cfg), cfg)
        stock_app = stock_celery.make_app(url, events)
        stock_celery.wait_ready(stock_app)
        one = Workflow("trivial", inputs=["v"])
        one.output(
            "v", one.step("echo", "test.echo", value=one.input("v"), classes=["cpu"])["value"]
        )
        seq = _sequence(5)
        fleet_round(client, one, 20)  # warm-up: imports, connections
        plain_round(client.app, 20, False)
        fleet_hops(client, seq, 5, 5)
        plain_hops(client.app, 5, 5)
        stock_hops(stock_app, 5)
        stock_round(stock_app, 20)
        hop: dict[str, list[float]] = {"fleet": [], "plain": [], "stock": []}
        rate: dict[str, list[float]] = {"fleet": [], "plain": [], "stock": []}
        phases: dict[str, list[tuple[float, float]]] = {"fleet": [], "plain": []}
        cpu: dict[str, list[float]] = {"fleet": [], "plain": [], "stock": []}
        probe = redis.Redis.from_url(url)
        for _ in range(args.rounds):  # interleaved, so drift favours none
            hop["fleet"].append(fleet_hops(client, seq, args.hops, 5))
            hop["plain"].append(plain_hops(client.app, args.hops, 5))
            hop["stock"].append(stock_hops(stock_app, args.hops))
            for side in ("fleet", "plain"):
                before = _redis_cpu(probe)
                if side == "fleet":
                    split = fleet_split(client, one, args.tasks)
                else:
                    split = plain_split(client.app, args.tasks)
                cpu[side].append((_redis_cpu(probe) - before) * 1000 / args.tasks)
                rate[side].append(split[0])
                phases[side].append(split[1:])
            before = _redis_cpu(probe)
            rate["stock"].append(stock_round(stock_app, args.tasks))
            cpu["stock"].append((_redis_cpu(probe) - before) * 1000 / args.tasks)
        med_hop = {k: round(statistics.median(v), 3) for k, v in hop.items()}
        med_rate = {k: round(statistics.median(v), 1) for k, v in rate.items()}
        med_cpu = {k: round(statistics.median(v), 4) for k, v in cpu.items()}
        return {
            "hop_ms": med_hop,
            "hop_ratio": round(med_hop["fleet"] / med_hop["plain"], 3),
            "hop_ratio_stock": round(med_hop["fleet"] / med_hop["stock"], 3),
            "one_step_per_s": med_rate,
            "one_step_ratio": round(med_rate["fleet"] / med_rate["plain"], 3),
            "one_step_ratio_stock": round(med_rate["fleet"] / med_rate["stock"], 3),
            "one_step_while_sending_per_s": {
                k: round(statistics.median(p[0] for p in v), 1) for k, v in phases.items()
            },
            "one_step_after_sending_per_s": {
                k: round(statistics.median(p[1] for p in v), 1) for k, v in phases.items()
            },
            "redis_cpu_ms_per_run": med_cpu,
            "redis_cpu_ratio": round(med_cpu["fleet"] / med_cpu["plain"], 3),
            "samples": {"hop_ms": hop, "per_s": rate, "redis_cpu_ms": cpu},
        }
    finally:
        stock_celery.stop(stock)
        fleet.stop()


def _redis_cpu(client: Any) -> float:
    """Seconds of CPU the Redis server has used (its own account: every thread)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _split(
    start: float, sent: float, waited: float, ended: list[float]
) -> tuple[float, float, float]:
    """(runs per second until the client had every result, as the stock round measures;
    ended per second while the client was sending; after it, to the last end)."""
    last = max(ended)
    during = sum(1 for t in ended if t <= sent)
    after = (len(ended) - during) / (last - sent) if last > sent else 0.0
    return len(ended) / (waited - start), during / (sent - start), after


def fleet_split(client: Any, wf: Any, n: int) -> tuple[float, float, float]:
    """``n`` one-step workflows submitted one by one, then waited for (as fleet_round), with
    when each ended (its record's finished_at)."""
    start = time.time()
    runs = [client.submit(wf, {"v": i}) for i in range(n)]
    sent = time.time()
    for r in runs:
        r.get(timeout=120)
    waited = time.time()
    return _split(start, sent, waited, [r.info().finished_at for r in runs])


def plain_split(app: Any, n: int) -> tuple[float, float, float]:
    """``n`` plain tasks sent one by one, then waited for (as plain_round), with when each
    ended (its result's date_done)."""
    start = time.time()
    results = [app.signature("fleet.ping", args=(i,)).apply_async(queue="cpu") for i in range(n)]
    sent = time.time()
    for r in results:
        r.get(timeout=120)
    waited = time.time()
    return _split(start, sent, waited, [r.date_done.timestamp() for r in results])


def stock_hops(app: Any, n: int, steps: int = 5) -> float:
    """Milliseconds per hop of a stock Celery chain alternating its cpu and io queues."""
    from celery import chain

    per_hop = []
    for i in range(n):
        sigs = [
            app.signature("stock.ping", args=(i,) if k == 0 else (),
                          queue=stock_celery.QUEUES[k % 2])
            for k in range(steps)
        ]  # fmt: skip
        start = time.perf_counter()
        chain(*sigs).apply_async().get(timeout=60)
        per_hop.append((time.perf_counter() - start) * 1000 / steps)
    return statistics.median(per_hop)


def stock_round(app: Any, n: int) -> float:
    """One-step stock tasks per second, all sent at once to its cpu queue."""
    start = time.perf_counter()
    sent = [app.signature("stock.ping", args=(i,)).apply_async(queue="stock-cpu")
            for i in range(n)]  # fmt: skip
    for r in sent:
        r.get(timeout=120)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hops", type=int, default=40, help="5-step runs per latency round")
    parser.add_argument("--tasks", type=int, default=300, help="one-step runs per round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out = args.out.resolve()  # (measure() moves into it)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    for events in (True, False):
        result["events_on" if events else "events_off"] = measure(events, args)
    result |= {"rounds": args.rounds, "hops": args.hops, "tasks": args.tasks}
    result |= {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (args.out / "hop_latency.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, label in (("events_on", "task events on"), ("events_off", "task events off")):
        r = result[key]
        print(f"{label}:")
        hop, per = r["hop_ms"], r["one_step_per_s"]
        print(f"  per step  fleet {hop['fleet']:7.3f} ms  plain hop {hop['plain']:7.3f} ms", end="")
        print(f"  ratio {r['hop_ratio']:.3f}", end="")
        print(f"   stock hop {hop['stock']:7.3f} ms  ratio {r['hop_ratio_stock']:.3f}")
        print(
            f"  one step  fleet {per['fleet']:7.1f} /s  plain task {per['plain']:7.1f} /s", end=""
        )
        print(f"  ratio {r['one_step_ratio']:.3f}", end="")
        print(f"   stock task {per['stock']:7.1f} /s  ratio {r['one_step_ratio_stock']:.3f}")
        during, after = r["one_step_while_sending_per_s"], r["one_step_after_sending_per_s"]
        print(
            f"    while sending: fleet {during['fleet']:7.1f} /s  plain {during['plain']:7.1f} /s",
            end="",
        )
        print(f"   after: fleet {after['fleet']:7.1f} /s  plain {after['plain']:7.1f} /s")
        red = r["redis_cpu_ms_per_run"]
        print(
            f"  Redis CPU a one-step run: fleet {red['fleet']:.3f} ms  plain {red['plain']:.3f}"
            f" ms  ratio {r['redis_cpu_ratio']:.3f}   stock {red['stock']:.3f} ms"
        )


if __name__ == "__main__":
    main()
