"""The main job: a voice support agent answering a spoken question on a local fleet.

Starts the local fleet and the example order-status API, builds the knowledge-base index,
speaks the question to a WAV file, runs ``fleet/examples/voice_agent.yaml``, and prints the answer,
the trace (the class of every step) and the timings.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.errors import FleetError
from fleet.paths import EXAMPLES


def speak_to_file(text: str, path: Path, voice: str = "en-us", speed: int = 165) -> Path:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FleetError("espeak-ng is not installed (apt-get install espeak-ng)")
    argv = [binary, "-v", voice, "-s", str(speed), "-w", str(path), text]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return path


class OrderAPI:
    """The example order-status API (fleet/examples/shop_api.py) as a child process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(EXAMPLES / "shop_api.py"), "--port", str(self.port)]
        argv += ["--db", str(workdir / "shop.sqlite")]
        self.log = (workdir / "logs" / "shop-api.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise FleetError("the example order API did not start (see logs/shop-api.log)")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def run_voice_demo(
    cfg: FleetConfig,
    workdir: Path,
    question: str,
    flower: bool,
    say: Callable[[str], None],
    show: Callable[[Any, float], None],
) -> None:
    """Everything the main job does, in order; ``show(handle, seconds)`` prints a run."""

    client = Fleet()
    for name in ("kb_build.yaml", "voice_agent.yaml"):
        client.validate(EXAMPLES / name)  # before starting anything
    api = OrderAPI(workdir)
    say(f"order API: {api.url} (SQLite {workdir / 'shop.sqlite'})")
    # The workers may call this API; they read nothing from this machine's disk: the
    # documents and the question go in by reference, the spoken answer comes back by one.
    env = {"FLEET_HTTP_ALLOW": f"127.0.0.1:{api.port}"}
    fleet = LocalFleet(cfg, [], flower, workdir, "WARNING", say=say, env=env)
    try:
        fleet.start()
        say("building the knowledge-base index (embeddings on npu-lite, FAISS on cpu)...")
        start = time.monotonic()
        kb = client.submit(EXAMPLES / "kb_build.yaml", {"docs": client.upload(EXAMPLES / "kb")})
        show(kb, time.monotonic() - start)
        audio = speak_to_file(question, workdir / "question.wav")
        say(f"question ({audio}): {question!r}")
        start = time.monotonic()
        inputs = {"audio": client.upload(audio), "api": api.url}
        run = client.submit(EXAMPLES / "voice_agent.yaml", inputs)
        show(run, time.monotonic() - start)
        info = run.info()
        if info is not None and info.outputs and info.outputs.get("audio"):
            answer = workdir / "answer.wav"
            client.download(info.outputs["audio"], answer)
            say(f"spoken answer: {answer}")
    finally:
        api.stop()
        fleet.stop()
