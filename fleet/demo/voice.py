"""The main job: a voice support agent answering a spoken question on a local fleet.

Starts the local fleet and the example order-status API, builds the knowledge-base index,
speaks the question to a WAV file, runs ``fleet/examples/voice_agent.yaml``, and prints the answer,
the trace (the class of every step) and the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.demo.order_api import OrderAPI
from fleet.demo.speech import speak_to_file
from fleet.deploy.local import LocalFleet
from fleet.paths import EXAMPLES


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
    with ExitStack() as started:  # stopped, the fleet first, however this ends
        api = OrderAPI(workdir)
        started.callback(api.stop)
        say(f"order API: {api.url} (SQLite {workdir / 'shop.sqlite'})")
        # The workers may call this API; they read nothing from this machine's disk: the
        # documents and the question go in by reference, the spoken answer comes back by one.
        env = {"FLEET_HTTP_ALLOW": f"127.0.0.1:{api.port}"}
        fleet = LocalFleet(cfg, [], flower, workdir, "WARNING", say=say, env=env)
        started.callback(fleet.stop)
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
