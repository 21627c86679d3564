"""API waits on the io class against plain Celery, side by side in one run.

A local API (asyncio, keep-alive, in a process of its own) answers every request after
``--delay`` seconds and counts the requests it holds at once. Then, in interleaved rounds:

- **fleet**: ``--runs`` one-step workflows of ``http.request`` to that API, all submitted at
  once (``Fleet.submit_many``; ``--submit each``: a loop of ``submit``), on one io worker
  with the shipped io preset (``--io-pool`` / ``--io-concurrency``
  override it, to measure alternatives);
- **plain**: plain Celery on the same Redis, one worker ``-P gevent -c 1000`` with task events
  on (as Flower needs, and as fleet workers run), a task that calls the API with one shared
  ``httpx.Client``; ``--runs`` tasks sent at once (in one kombu publish batch, as
  ``submit_many`` sends its steps; ``--submit each``: a loop of ``send_task``).

For each: runs per second (first submit to last result), the most calls in flight at the
API, and the io worker's peak RSS (all its processes) while it waits. Prints a table, or
JSON with ``--json``, and writes bench/results/io_waits.json.

    python bench/io_waits.py --runs 1000 --delay 1 [--rounds 1] [--submit batch|each] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAIN_QUEUE = "plain-io"

# ---------------------------------------------------------------------------- the local API


def serve(port: int, delay: float) -> None:
    """The API: GET /wait answers after ``delay`` s; /stats and /reset its in-flight counts."""
    state = {"now": 0, "most": 0, "served": 0}

    async def answer(writer: asyncio.StreamWriter, body: dict[str, Any], close: bool) -> None:
        data = json.dumps(body).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
        writer.write(f"{head}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n".encode())
        writer.write(data)
        await writer.drain()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                path = line.split(" ")[1] if " " in line else "/"
                close = b"connection: close" in head.lower()
                if path.startswith("/stats"):
                    await answer(writer, dict(state), close)
                elif path.startswith("/reset"):
                    state.update(most=0, served=0)
                    await answer(writer, {}, close)
                else:
                    state["now"] += 1
                    state["most"] = max(state["most"], state["now"])
                    await asyncio.sleep(delay)
                    state["now"] -= 1
                    state["served"] += 1
                    await answer(writer, {"ok": True}, close)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def api_call(port: int, path: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json())


# ---------------------------------------------------------------------- plain Celery's side


def plain_app() -> Any:
    """The baseline's app: the fleet's broker, JSON, task events as Flower needs."""
    from celery import Celery

    url = os.environ["FLEET_BROKER_URL"]
    app = Celery("plain_io", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # 1000 greenlets ack and store results at once: the Redis pools must hold as many
        # connections (kombu's default of 10 fails acks with MaxConnectionsError).
        broker_transport_options={"max_connections": 2000},
        redis_max_connections=2000,
    )
    shared: list[Any] = []

    @app.task(name="plain.call")
    def call(url: str) -> int:
        import httpx

        if not shared:  # one client for the process, its pool as large as the waits
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=2000)
            shared.append(httpx.Client(limits=limits, timeout=30))
        return int(shared[0].get(url).status_code)

    return app


if os.environ.get("IO_WAITS_PLAIN"):  # imported by the baseline's worker (celery -A)
    app = plain_app()


def start_plain_worker(workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "IO_WAITS_PLAIN": "1", "PYTHONPATH": str(ROOT / "bench")}
    argv = [sys.executable, "-m", "celery", "-A", "io_waits:app", "worker", "-P", "gevent"]
    argv += ["-c", "1000", "-Q", PLAIN_QUEUE, "-E", "-l", "WARNING", "-n", "plain@%h"]
    argv += ["--without-mingle", "--without-gossip"]
    log = (workdir / "plain-worker.log").open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


# ------------------------------------------------------------------------------ measuring


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (from /proc)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Peak:
    """The highest RSS of a process tree while a block runs (sampled every 0.1 s)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.mb, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.cpu_s = 0.0  # the process's CPU time over the block
        self.client_cpu_s = 0.0  # this (the submitting) process's

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, rss_mb(self.pid))
            self._stop.wait(0.1)

    def __enter__(self) -> Peak:
        self._cpu0, self._client0 = cpu_s(self.pid), time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = cpu_s(self.pid) - self._cpu0
        self.client_cpu_s = time.process_time() - self._client0

    def figures(self, runs: int) -> dict[str, float]:
        return {
            "rss_mb": self.mb,
            "worker_cpu_ms_per_run": round(self.cpu_s / runs * 1000, 3),
            "client_cpu_ms_per_run": round(self.client_cpu_s / runs * 1000, 3),
        }


def fleet_round(
    client: Any, wf: Any, url: str, runs: int, pid: int, each: bool
) -> dict[str, float]:
    with Peak(pid) as peak:
        start = time.perf_counter()
        if each:
            handles = [client.submit(wf, {"url": url}) for _ in range(runs)]
        else:
            handles = client.submit_many(wf, [{"url": url}] * runs)
        sent = time.perf_counter() - start
        for h in handles:
            h.get(timeout=300)
        took = time.perf_counter() - start
    return {"runs_per_s": runs / took, "seconds": took, "submit_s": sent, **peak.figures(runs)}


def plain_round(app: Any, url: str, runs: int, pid: int, each: bool) -> dict[str, float]:
    """The baseline's results are read as the fleet's are, from Redis (one MGET of the
    pending ones every 50 ms), not through Celery's pub/sub result consumer, which spent a
    whole core here draining 1000 subscriptions and starved the worker it measured."""
    with Peak(pid) as peak:
        start = time.perf_counter()
        if each:
            sent = [
                app.send_task("plain.call", args=(url,), queue=PLAIN_QUEUE) for _ in range(runs)
            ]
        else:
            with app.producer_or_acquire() as producer, producer.batch():
                sent = [
                    app.send_task("plain.call", args=(url,), queue=PLAIN_QUEUE, producer=producer)
                    for _ in range(runs)
                ]
        submitted = time.perf_counter() - start
        pending = [app.backend.get_key_for_task(r.id) for r in sent]
        client = app.backend.client
        while pending:
            found = client.mget(pending)
            for raw in found:
                if raw is not None and json.loads(raw)["status"] != "SUCCESS":
                    raise RuntimeError(f"a baseline task failed: {raw[:200]!r}")
            pending = [k for k, raw in zip(pending, found, strict=True) if raw is None]
            if pending:
                time.sleep(0.05)
        took = time.perf_counter() - start
    return {"runs_per_s": runs / took, "seconds": took, "submit_s": submitted, **peak.figures(runs)}


def measured(port: int, work: Any) -> dict[str, float]:
    api_call(port, "/reset")
    out: dict[str, float] = work()
    out["in_flight"] = api_call(port, "/stats")["most"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fleet import Fleet, Workflow
    from fleet.config import load_config
    from fleet.deploy.local import LocalFleet, free_port

    workdir = args.out / "io-waits-work"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--delay", str(args.delay)]
    )
    overrides = {}
    if args.io_pool:
        overrides["FLEET_CLASS_IO_POOL"] = args.io_pool
    if args.io_concurrency:
        overrides["FLEET_CLASS_IO_CONCURRENCY"] = str(args.io_concurrency)
    os.environ.update(overrides)
    cfg = load_config()
    spec = cfg.classes["io"]
    env = {"FLEET_HTTP_ALLOW": f"127.0.0.1:{port}", **overrides}
    fleet = LocalFleet(
        cfg, ["io"], flower=False, workdir=workdir, loglevel="WARNING", say=lambda _: None, env=env
    )
    plain = None
    try:
        fleet.start()
        plain = start_plain_worker(workdir)
        client = Fleet()
        wf = Workflow("io-wait", inputs=["url"])
        call = wf.step("call", "http.request", url=wf.input("url"), classes=["io"])
        wf.output("status", call["status"])
        url = f"http://127.0.0.1:{port}/wait"
        papp = plain_app()
        worker_pid = fleet.workers_of("io")[0].proc.pid
        each = args.submit == "each"
        fleet_round(client, wf, url, 20, worker_pid, each)  # warm-up: imports, connections
        plain_round(papp, url, 20, plain.pid, each)
        rounds: dict[str, list[dict[str, float]]] = {"fleet": [], "plain": []}
        for _ in range(args.rounds):  # interleaved, so drift favours neither
            rounds["fleet"].append(
                measured(port, lambda: fleet_round(client, wf, url, args.runs, worker_pid, each))
            )
            rounds["plain"].append(
                measured(port, lambda: plain_round(papp, url, args.runs, plain.pid, each))
            )
        med = {
            side: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]}
            for side, rs in rounds.items()
        }
        return {
            "fleet": med["fleet"],
            "plain": med["plain"],
            "ratio": round(med["fleet"]["runs_per_s"] / med["plain"]["runs_per_s"], 3),
            "rounds": rounds,
            "io_preset": {"pool": spec.pool, "concurrency": spec.concurrency},
            "baseline": "plain Celery 5.7, -P gevent -c 1000, one shared httpx.Client, -E",
            "runs": args.runs,
            "submit": args.submit,
            "delay_s": args.delay,
            "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    finally:
        if plain is not None:
            plain.send_signal(signal.SIGTERM)
            plain.wait(30)
        fleet.stop()
        api.terminate()
        api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=1.0, help="the API's answer time (s)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--io-pool", choices=["threads", "gevent"], help="override the preset")
    parser.add_argument("--io-concurrency", type=int, help="override the preset")
    parser.add_argument(
        "--submit",
        choices=["batch", "each"],
        default="batch",
        help="send the runs in one batch (submit_many; a publish batch for plain) or each alone",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the API's own process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.delay)
        return
    if "FLEET_BROKER_URL" not in os.environ:
        from fleet.deploy.local import free_port

        os.environ["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = run(args)
    (args.out / "io_waits.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    preset = result["io_preset"]
    print(f"{args.runs} one-step runs against an API answering in {args.delay:g} s")
    head = f"{'':28}{'runs/s':>9}{'in flight':>11}{'RSS MB':>9}"
    print(f"{head}{'CPU ms/run: worker':>20}{'client':>8}")
    for side, label in (
        ("fleet", f"fleet io ({preset['pool']} x {preset['concurrency']})"),
        ("plain", "plain Celery (gevent x 1000)"),
    ):
        r = result[side]
        print(
            f"{label:<28}{r['runs_per_s']:>9.1f}{r['in_flight']:>11.0f}{r['rss_mb']:>9.0f}"
            f"{r['worker_cpu_ms_per_run']:>20.2f}{r['client_cpu_ms_per_run']:>8.2f}"
        )
    print(f"ratio fleet / plain: {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
