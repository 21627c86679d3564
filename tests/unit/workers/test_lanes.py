"""A GPU class that lists several runtimes runs a process per runtime on its GPU (a lane
each): the queues a step of each runtime goes to, each lane's command and environment, when
a host lays the class out that way, and how the lanes of one worker live and die together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.constants import ASSUME_CUDA_ENV, LANE_ENV
from fleet.deploy.launch import host_lanes, lane_name, worker_argv, worker_env
from fleet.routing.router import FleetRouter, take_decision
from fleet.routing.state import CachedState, FleetState, WorkerInfo, class_depth
from tests.support.states import FixedReader


def test_the_gpu_preset_has_a_lane_per_runtime(cfg: FleetConfig) -> None:
    gpu = cfg.classes["gpu"]
    assert gpu.lanes == ["llama.cpp", "ctranslate2"]
    assert gpu.queue_for("llama.cpp") == gpu.queue_for(None) == "gpu"  # plain ops: first lane
    assert gpu.queue_for("ctranslate2") == "gpu.ctranslate2"
    assert gpu.queues == ["gpu", "gpu.ctranslate2"]
    for cls in ("cpu", "io", "npu-lite"):  # CPU classes: one queue, no lanes
        spec = cfg.classes[cls]
        assert spec.lanes == [] and spec.queues == [cls] and spec.queue_for("torch") == cls
    one = gpu.model_copy(update={"runtimes": ["llama.cpp"]})
    assert one.lanes == [] and one.queues == ["gpu"]


def test_a_host_lays_out_lanes_only_for_a_gpu(
    cfg: FleetConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ASSUME_CUDA_ENV, raising=False)
    gpu = cfg.classes["gpu"]
    assert host_lanes(gpu) == [None]  # this host has no GPU: one process serves both queues
    argv = worker_argv(gpu, name="gpu@h")
    assert argv[argv.index("-Q") + 1] == "gpu,gpu.ctranslate2"
    monkeypatch.setenv(ASSUME_CUDA_ENV, "1")
    assert host_lanes(gpu) == ["llama.cpp", "ctranslate2"]
    assert host_lanes(cfg.classes["cpu"]) == [None]
    stt = worker_argv(gpu, name="gpu-2@h", lane="ctranslate2")
    assert stt[stt.index("-Q") + 1] == "gpu.ctranslate2" and stt[stt.index("-n") + 1] == (
        "gpu-2-ctranslate2@h"
    )
    llm = worker_argv(gpu, name="gpu-2@h", lane="llama.cpp")
    assert llm[llm.index("-Q") + 1] == "gpu" and llm[llm.index("-n") + 1] == "gpu-2@h"
    assert worker_env(cfg, "gpu", base={}, lane="ctranslate2")[LANE_ENV] == "ctranslate2"
    assert LANE_ENV not in worker_env(cfg, "gpu", base={LANE_ENV: "x"})
    assert lane_name("gpu-%h", gpu, "ctranslate2") == "gpu-%h-ctranslate2"


def test_the_router_sends_a_step_to_the_lane_of_its_runtime(cfg: FleetConfig) -> None:
    workers = {"gpu": [WorkerInfo("gpu@h", ("gpu",), 1, "prefork", 1, 0.0)]}
    router = FleetRouter(cfg, CachedState(FixedReader(cfg, FleetState(workers=workers)), 60))
    stt = {"op": "speech.stt", "kind": "model", "classes": ["gpu"], "args": {}}
    assert router("fleet.step", (), {"call": {**stt, "runtime": "ctranslate2"}}, {}) == {
        "queue": "gpu.ctranslate2"
    }
    decision = take_decision("fleet.step")
    assert decision is not None and decision.queue == "gpu.ctranslate2"  # in the trace too
    llm = {**stt, "op": "llm.generate", "runtime": "llama.cpp"}
    assert router("fleet.step", (), {"call": llm}, {}) == {"queue": "gpu"}
    assert router("fleet.step", (), {"call": {**stt, "op": "text.upper"}}, {}) == {"queue": "gpu"}


def test_the_class_depth_counts_every_lane(cfg: FleetConfig) -> None:
    specs = list(cfg.classes.values())
    by_queue = {q: (3 if q == "gpu.ctranslate2" else 2) for s in specs for q in s.queues}
    depth = class_depth(specs, by_queue)
    assert depth["gpu"] == 5 and depth["cpu"] == 2
    del by_queue["gpu.ctranslate2"]  # a lane's queue unread: the class's depth is unknown
    assert "gpu" not in class_depth(specs, by_queue)


LANE = (
    "import os, sys, time, signal; "
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(int(sys.argv[2]))); "
    "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
)


def _worker(tmp_path: Path, codes: tuple[int, int]) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A worker of two lanes (each exits with its code on SIGTERM); its lanes' pids."""
    pids = [tmp_path / "a", tmp_path / "b"]
    lanes = ", ".join(
        f"(lane + [{str(p)!r}, '{c}'], {{}})" for p, c in zip(pids, codes, strict=True)
    )
    code = (
        "import sys; from workers.lanes import run_lanes; "
        f"lane = [sys.executable, '-c', {LANE!r}]; "
        f"sys.exit(run_lanes([{lanes}], grace=10, poll=0.05))"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not all(p.exists() and p.read_text() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return worker, [int(p.read_text()) for p in pids]


def test_the_lanes_of_a_worker_stop_together(tmp_path: Path) -> None:
    """One lane dies: the other is stopped and the worker exits with the dead lane's code,
    so that whatever restarts the worker restarts it whole."""
    worker, (first, second) = _worker(tmp_path, (0, 7))
    os.kill(first, signal.SIGKILL)
    assert worker.wait(30) == 128 + signal.SIGKILL
    with pytest.raises(ProcessLookupError):  # the other lane was stopped, not left behind
        os.kill(second, 0)


def test_a_signal_reaches_every_lane(tmp_path: Path) -> None:
    worker, _ = _worker(tmp_path, (3, 3))
    worker.terminate()  # a warm shutdown of the worker: each lane gets it
    assert worker.wait(30) == 3
