"""The gpu class laid out as on a CUDA host (FLEET_ASSUME_CUDA=1, on this CPU machine): a
worker process per runtime -- llama.cpp and CTranslate2 -- each refusing any other runtime as
a process bound to a GPU does. The voice agent and the P/D example run whole on it, no step
refused; a step a sender without lanes puts on the wrong lane is routed to its own, not
failed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import load_config
from fleet.constants import ASSUME_CUDA_ENV, LANE_ENV
from fleet.demo.speech import speak_to_file
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app
from fleet.paths import EXAMPLES
from tests.support.voice import QUESTION, ask_voice_agent, order_api_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TEST_CONFIG = Path(__file__).resolve().parents[1] / "fleet-test.toml"
SERVED = ["gpu", "npu-lite", "cpu", "io"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


def test_the_voice_agent_runs_on_a_gpu_class_with_a_lane_per_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ASSUME_CUDA_ENV, "1")  # LocalFleet lays the class out in this process
    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = load_config(TEST_CONFIG, env={**os.environ, "FLEET_BROKER_URL": url})
    env = {"FLEET_CONFIG": str(TEST_CONFIG), "FLEET_BROKER_URL": url, ASSUME_CUDA_ENV: "1"}
    with LocalFleet(cfg, SERVED, False, tmp_path, "INFO", lambda _: None, env) as fleet:
        lanes = {c.lane: c for c in fleet.children if c.cls == "gpu"}
        assert set(lanes) == {"llama.cpp", "ctranslate2"}
        for lane, child in lanes.items():
            assert _environ(child.proc.pid)[LANE_ENV] == lane
        assert len(fleet.workers_of("gpu")) == 1  # one worker, two processes
        client = Fleet(create_app(cfg), cfg)
        kb = {"docs": client.upload(EXAMPLES / "kb"), "index": "kb-lanes"}
        client.submit(EXAMPLES / "kb_build.yaml", kb).get(timeout=300)
        with order_api_server() as api:
            run = ask_voice_agent(client, api, "kb-lanes", tmp_path)
            out = run.get(timeout=300)
        assert "1042" in out["question"].replace(",", "")
        assert out["facts"] == "Your order 1042 (blender) is shipped."
        trace = run.trace()
        assert {e.status for e in trace} <= {"succeeded", "skipped"}  # none refused
        steps = {e.node: e for e in trace if e.status == "succeeded"}
        stt, call = steps["transcribe"], steps["tools#1/call"]
        assert stt.cls == call.cls == "gpu"
        assert stt.queue == "gpu.ctranslate2" and "-ctranslate2@" in (stt.worker or "")
        assert call.worker is not None and "-ctranslate2@" not in call.worker
        assert call.worker.startswith("gpu@")

        pd = client.submit(EXAMPLES / "pd_split.yaml", {"prompt": "Say hello to the team."})
        assert pd.get(timeout=300)["text"].strip()
        prefill = next(e for e in pd.trace() if e.node == "prefill")
        assert prefill.cls == "gpu" and (prefill.worker or "").startswith("gpu@")

        # A sender whose configuration has no lanes puts speech-to-text on the class queue:
        # the llama.cpp lane refuses CTranslate2 before loading it, and the step is routed
        # again -- to its lane -- instead of failing the run.
        classes = {**cfg.classes, "gpu": cfg.classes["gpu"].model_copy(update={"runtimes": None})}
        old_cfg = cfg.model_copy(update={"classes": classes})
        old = Fleet(create_app(old_cfg), old_cfg)
        wf = Workflow("stt-old-sender", inputs=["audio"])
        heard = wf.step("stt", "speech.stt", audio=wf.input("audio"), classes=["gpu"])
        wf.output("text", heard["text"])
        audio = old.upload(speak_to_file(QUESTION, tmp_path / "again.wav"))
        again = old.submit(wf, {"audio": audio})
        assert "1042" in again.get(timeout=300)["text"].replace(",", "")
        tried = [e for e in again.trace() if e.node == "stt"]
        assert [e.status for e in tried] == ["rerouted", "succeeded"], tried
        assert tried[0].queue == "gpu" and "ctranslate2 lane" in (tried[0].error or "")
        assert tried[1].queue == "gpu.ctranslate2"
    logs = "".join(c.log.read_text() for c in lanes.values())
    assert "loaded model stt:whisper-base" in lanes["ctranslate2"].log.read_text()
    assert "loaded model stt" not in lanes["llama.cpp"].log.read_text()
    assert "loaded model llm" not in lanes["ctranslate2"].log.read_text()
    assert "already runs" not in logs  # no process was asked for a second runtime
