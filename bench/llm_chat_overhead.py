"""What ``llm.chat`` adds to a direct call of the same endpoint, in one run.

llama-cpp-python's OpenAI-compatible server serves the fleet's Gemma GGUF on a free port.
The same request -- one user message, ``max_tokens`` 1, greedy, the prompt cached after the
warm-up -- goes, interleaved, ``--calls`` times each way:

- **direct**: ``httpx.Client.post`` on one kept-alive client, the JSON parsed;
- **llm.chat**: the op's function in this process (its checks, the allowlist, the shared
  client and its deadline, the answer parsed into outputs).

Prints the median and p95 of each and the difference (the op's overhead), or JSON with
``--json``.

    python bench/llm_chat_overhead.py [--calls 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Question: What is the capital of France?\nAnswer:"


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    from workers.ops.models import DEFAULT_LLM, gguf_path

    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path(DEFAULT_LLM))]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--chat_format", "gemma"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: see {log}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(port: int, calls: int) -> dict[str, Any]:
    import httpx

    from workers.ops.chat import chat

    base = f"http://127.0.0.1:{port}/v1"
    body = {
        "model": "gemma",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    direct_client = httpx.Client(timeout=60)

    def direct() -> None:
        reply = direct_client.post(f"{base}/chat/completions", json=body)
        reply.raise_for_status()
        reply.json()["choices"][0]["message"]

    def op() -> None:
        chat(base_url=base, model="gemma", prompt=PROMPT, max_tokens=1)

    for _ in range(5):  # warm-up: the prompt cached on the server, connections open
        direct()
        op()
    times: dict[str, list[float]] = {"direct": [], "llm.chat": []}
    for _ in range(calls):  # interleaved, so drift favours neither
        for name, call in (("direct", direct), ("llm.chat", op)):
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    summary = {
        name: {
            "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(percentile(ms, 0.95), 2),
        }
        for name, ms in times.items()
    }
    over = summary["llm.chat"]["median_ms"] - summary["direct"]["median_ms"]
    return {
        **summary,
        "overhead_ms": round(over, 2),
        "calls": calls,
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from fleet.deploy.local import free_port

    port = free_port()
    os.environ["FLEET_HTTP_ALLOW"] = f"127.0.0.1:{port}"  # before the op reads its settings
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_server(port, args.out / "llm-chat-server.log")
    try:
        result = measure(port, args.calls)
    finally:
        server.terminate()
        server.wait(10)
    (args.out / "llm_chat_overhead.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name in ("direct", "llm.chat"):
        r = result[name]
        print(f"{name:<9} median {r['median_ms']:7.2f} ms   p95 {r['p95_ms']:7.2f} ms")
    print(f"llm.chat over a direct call: {result['overhead_ms']:.2f} ms (median)")


if __name__ == "__main__":
    main()
