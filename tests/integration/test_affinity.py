"""Prefix affinity on real workers: two gpu workers (batching llama.cpp, the tiny GGUF) serve
agent-style runs whose LLM rounds share a per-run system prompt, with a hop through the io
class in between. Each run's later rounds go to the worker that ran its first, through that
worker's own queue, and reuse the prefix's KV there. A step waiting in the queue of a worker
that died is routed again and the run finishes on the other one."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import DIRECT_WORKERS_KEY, STEP_TASK
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app
from fleet.routing.affinity import direct_queue
from fleet.routing.state import StateReader
from tests.support.sends import sends_through

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROUNDS = 3


def agent(model: str) -> Workflow:
    """ROUNDS LLM rounds; each round's prompt: the run's system prompt, then the last answer."""
    wf = Workflow("affinity-agent", inputs=["system", "q"])
    question: Any = wf.input("q")
    for i in range(1, ROUNDS + 1):
        p = wf.step(
            f"p{i}", "llm.prompt", instruction=wf.input("system"), question=question, classes=["io"]
        )
        g = wf.step(
            f"g{i}",
            "llm.generate",
            prompt=p["prompt"],
            max_tokens=6,
            model=model,
            n_ctx=512,
            classes=["gpu"],
        )
        question = g["text"]
    wf.output("answer", question)
    return wf


def system_prompt(tag: str) -> str:
    """Different for each run from its first words: no run shares another's prefix."""
    return f"Session {tag}. You are the order desk of a shop. " + "Be brief and exact. " * 8


@pytest.fixture()
def two_gpu_fleet(fleet_cfg: FleetConfig, tmp_path: Path) -> Any:
    classes = dict(fleet_cfg.classes)
    classes["gpu"] = classes["gpu"].model_copy(update={"workers": 2, "concurrency": 8})
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "classes": classes}
    )
    with LocalFleet(cfg, ["gpu", "io"], flower=False, workdir=tmp_path) as fleet:
        # the fleet's start waits for a live worker of each class, not for each worker: on a
        # busy machine the second gpu worker may beat (and announce its queue) a moment later
        deadline = time.monotonic() + 60
        while len(_gpu_workers(cfg)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield fleet, Fleet(create_app(cfg), cfg)


def _gpu_workers(cfg: FleetConfig) -> list[str]:
    return sorted(w.hostname for w in StateReader(cfg).read().workers["gpu"])


def test_a_runs_llm_rounds_stay_on_the_worker_that_holds_its_prefix(
    two_gpu_fleet: Any, tiny_gguf: str
) -> None:
    _, client = two_gpu_fleet
    assert len(_gpu_workers(client.cfg)) == 2
    wf = agent(tiny_gguf)
    runs = [
        client.submit(wf, {"system": system_prompt(uuid.uuid4().hex[:8]), "q": f"order {i}"})
        for i in range(4)  # 8 sequences a worker: room for every run's round, always
    ]
    for run in runs:
        run.get(timeout=120)
    for run in runs:
        gens = {e.node: e for e in run.trace() if e.node.startswith("g")}
        outs = client.dispatcher.store.state(run.id)  # node -> its outputs
        first = gens["g1"].worker
        for i in range(2, ROUNDS + 1):
            entry = gens[f"g{i}"]
            assert entry.worker == first, (entry.route, gens["g1"].route)  # every round
            assert entry.queue == f"{first}.dq2" and entry.cls == "gpu"
            assert entry.route["reason"].startswith(f"prefix affinity: {first} holds")
            assert entry.route["worker"] == first
            assert outs[f"g{i}"]["cached_tokens"] >= 32  # the system prompt was not prefilled
        assert "affinity" not in gens["g1"].route["reason"]  # nothing held yet


def test_a_step_waiting_for_a_dead_worker_is_routed_again(
    two_gpu_fleet: Any, tiny_gguf: str
) -> None:
    fleet, client = two_gpu_fleet
    broker = redis.Redis.from_url(client.cfg.broker_url, decode_responses=True)
    hosts = _gpu_workers(client.cfg)
    dead_child = fleet.workers_of("gpu")[-1]
    dead = next(h for h in hosts if h.startswith("gpu-2@"))
    assert broker.sismember(DIRECT_WORKERS_KEY, dead)
    os.kill(dead_child.proc.pid, signal.SIGKILL)
    fleet.children.remove(dead_child)  # not restarted: its queue must be drained
    # Gone before the step is sent: a BRPOP the dying worker left waiting at Redis would
    # otherwise take the message into its closed connection (seen: 1 run in 3 here).
    dead_child.proc.wait(10)
    time.sleep(0.5)
    wf = Workflow("affinity-orphan", inputs=["p"])
    g = wf.step("g", "llm.generate", prompt=wf.input("p"), max_tokens=4, model=tiny_gguf)
    wf.output("t", g["text"])

    def to_dead_worker(call: Any, run: dict[str, Any], **_: Any) -> None:  # as affinity did
        client.app.send_task(
            STEP_TASK, kwargs={"call": call, "run": run}, queue=direct_queue(client.cfg, dead)
        )

    with sends_through(client.dispatcher, to_dead_worker):
        run = client.submit(wf, {"p": "where is my parcel"})
    assert broker.llen(f"{dead}.dq2") == 1
    run.get(timeout=60)  # the check found it once the worker stopped beating
    (entry,) = [e for e in run.trace() if e.node == "g"]
    assert entry.worker != dead and entry.worker in hosts and entry.status == "succeeded"
    assert broker.llen(f"{dead}.dq2") == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and broker.sismember(DIRECT_WORKERS_KEY, dead):
        time.sleep(0.2)
    assert not broker.sismember(DIRECT_WORKERS_KEY, dead)  # no longer watched
