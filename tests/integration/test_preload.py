"""A class's `preload` loads its models in each worker process before the first task: the
load is in the worker's log before any step ran, and the first LLM step on that class waits
for no model load (its trace's cold_s is empty), where a class without it loads on first use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import load_config
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LOADED = "loaded model llm:gemma3-270m"
TEST_CONFIG = Path(__file__).resolve().parents[1] / "fleet-test.toml"


def test_a_preloaded_class_runs_its_first_llm_step_warm(tmp_path: Path) -> None:
    # Workers read their configuration from the file and the environment: this one's file
    # is the test configuration plus the preload.
    conf = tmp_path / "fleet.toml"
    conf.write_text(TEST_CONFIG.read_text() + '\n[classes.npu-lite]\npreload = ["llm"]\n')
    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = load_config(conf, env={**os.environ, "FLEET_BROKER_URL": url})
    assert cfg.classes["npu-lite"].preload == ["llm"]
    env = {"FLEET_CONFIG": str(conf), "FLEET_BROKER_URL": url}
    served = ["npu-lite", "cpu", "io"]
    with LocalFleet(cfg, served, False, tmp_path, "INFO", lambda _: None, env) as fleet:
        (npu,) = fleet.workers_of("npu-lite")
        (cpu,) = fleet.workers_of("cpu")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and LOADED not in npu.log.read_text():
            time.sleep(0.2)
        assert LOADED in npu.log.read_text()  # before any task was sent
        assert LOADED not in cpu.log.read_text()  # no preload there
        client = Fleet(create_app(cfg), cfg)
        wf = Workflow("preloaded", inputs=["p"])
        for cls in ("npu-lite", "cpu"):
            gen = wf.step(cls, "llm.generate", prompt=wf.input("p"), max_tokens=2, classes=[cls])
            wf.output(cls, gen["text"])
        run = client.submit(wf, {"p": "Where is my order?"})
        run.get(timeout=300)
        steps = {e.node: e for e in run.trace()}
        assert steps["npu-lite"].cls == "npu-lite" and steps["npu-lite"].cold_s is None
        assert steps["cpu"].cls == "cpu" and (steps["cpu"].cold_s or 0) > 0  # loaded then
