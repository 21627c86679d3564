"""A cold start on real workers: the step that loads a model says how long the load took,
its worker's heartbeat tells the routers which processes hold the model, and the estimate
of a class that does not hold it yet counts the load."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.routing.estimate import estimate
from fleet.routing.profiles import ProfileStore
from fleet.routing.state import StateReader
from tests.unit.routing.test_policies import req

pytestmark = pytest.mark.integration


def test_a_model_load_is_reported_and_counted(client: Fleet, tiny_gguf: str) -> None:
    # a model no process holds yet, under the file roots (beside the tiny one)
    model = Path(tiny_gguf).with_name(f"cold-{uuid.uuid4().hex[:8]}.gguf")
    shutil.copy(tiny_gguf, model)
    wf = Workflow("cold-start", inputs=["p"])
    params = {"max_tokens": 4, "model": str(model), "n_ctx": 256, "classes": ["gpu"]}
    first = wf.step("first", "llm.generate", prompt=wf.input("p"), **params)
    again = wf.step("again", "llm.generate", prompt=first["text"] | wf.input("p"), **params)
    wf.output("t", again["text"])
    run = client.submit(wf, {"p": "the order is late"})
    run.get(timeout=60)
    steps = {e.node: e for e in run.trace()}
    assert steps["first"].cold_s is not None and steps["first"].cold_s > 0  # it loaded it
    assert steps["again"].cold_s is None  # the same process, the model already there
    assert steps["first"].cold_s < steps["first"].run_s

    reader = StateReader(client.cfg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the next heartbeat says so
        state = reader.read()
        gpu = [w for w in state.workers["gpu"] if w.hostname == steps["first"].worker]
        if gpu and gpu[0].warm.get("llm.generate") and gpu[0].cold.get("llm.generate"):
            break
        time.sleep(0.2)
    assert gpu and gpu[0].warm["llm.generate"] == 1  # the gpu class: one batching process
    # what the process's first step took: the load and the rest of the step
    assert gpu[0].cold["llm.generate"] >= steps["first"].cold_s - 1e-3
    assert state.cold_start("gpu", "llm.generate")[0] == 0.0
    est = estimate(req(), "gpu", state, ProfileStore(), client.cfg)
    assert est.cold_s == 0.0  # warm where it ran
    cold = [c for c in ("cpu", "npu-lite") if state.cold_start(c, "llm.generate")[0] > 0]
    for cls in cold:  # a class with a process that never ran it pays the measured load
        share, cost = state.cold_start(cls, "llm.generate")
        assert cost > 0  # measured: there, or where the model was loaded
        est = estimate(req(), cls, state, ProfileStore(), client.cfg)
        assert est.cold_s == pytest.approx(share * max(0.0, cost - est.service_s))
