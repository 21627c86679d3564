"""One native GPU runtime per worker process, packaged profile sets, and `fleet doctor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.config import FleetConfig
from fleet.errors import RuntimeRefused, WorkflowValidationError
from fleet.routing.profiles import PACKAGED, ProfileStore, profiles_path
from fleet.sdk import process as sdk
from fleet.sdk.registry import registry
from fleet.workflow.validate import validate


def test_the_gpu_class_runs_one_family_of_runtimes(cfg: FleetConfig) -> None:
    assert cfg.classes["gpu"].runtimes == ["llama.cpp", "ctranslate2"]
    assert registry.class_runtimes("gpu", cfg) == {"llama.cpp", "ctranslate2"}
    assert "torch" in registry.class_runtimes("npu-lite", cfg)
    assert "gpu" not in registry.get("embed.texts").eligible(cfg.classes)
    assert registry.get("llm.generate").eligible(cfg.classes)[0] == "gpu"
    wf = Workflow("pinned", inputs=["t"])
    wf.step("e", "embed.texts", texts=wf.input("t"), classes=["gpu"])
    with pytest.raises(WorkflowValidationError, match="no configured class can run op embed"):
        validate(wf.spec(), cfg, registry)


def test_a_second_gpu_runtime_in_one_process_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "_CLAIMED", [])
    monkeypatch.setattr(sdk, "cuda_bound", lambda: True)
    monkeypatch.setenv("FLEET_WORKER_CLASS", "gpu")
    monkeypatch.delenv("FLEET_LANE", raising=False)
    sdk.claim_runtime("llama.cpp")
    sdk.claim_runtime("llama.cpp")  # the same one again is fine
    with pytest.raises(RuntimeRefused, match=r"already runs llama\.cpp on the GPU; torch must run"):
        sdk.claim_runtime("torch")
    monkeypatch.setattr(sdk, "cuda_bound", lambda: False)  # on the CPU they coexist
    sdk.claim_runtime("torch")


def test_a_lane_refuses_every_runtime_but_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "_CLAIMED", [])
    monkeypatch.setenv("FLEET_WORKER_CLASS", "gpu")
    monkeypatch.setenv("FLEET_LANE", "llama.cpp")
    monkeypatch.setenv("FLEET_ASSUME_CUDA", "1")  # guarded as on a GPU host, here
    assert sdk.cuda_bound() and not sdk.wants_cuda()  # ...while its ops run on the CPU
    with pytest.raises(RuntimeRefused, match=r"ctranslate2 runs in .* \(queue gpu.ctranslate2\)"):
        sdk.claim_runtime("ctranslate2")
    assert sdk._CLAIMED == []  # refused before anything loaded: the process is not spoilt
    sdk.claim_runtime("llama.cpp")
    monkeypatch.setenv("FLEET_WORKER_CLASS", "cpu")  # a CPU class is never guarded
    assert not sdk.cuda_bound()
    sdk.claim_runtime("torch")


def test_the_h100_profile_set_ships_with_its_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_PROFILES", "h100")
    path = profiles_path()
    assert path == PACKAGED.with_name("profiles-h100.json") and path.is_file()
    data = json.loads(path.read_text())
    assert "H100" in data["provenance"]["host"] and data["provenance"]["derived"]
    # its cpu prefill ran on a CUDA build with the GPU visible: said, not passed off as CPU
    assert "GPU-assisted" in data["provenance"]["gpu_assisted"]
    store = ProfileStore.load(path)
    gpu, cpu = store.get("llm.decode", "gpu"), store.get("llm.decode", "cpu")
    assert gpu is not None and cpu is not None
    assert gpu.predict(100) == pytest.approx(0.191) and cpu.predict(100) == pytest.approx(0.773)
    prefill = store.get("llm.prefill", "gpu")
    assert prefill is not None and prefill.predict(512) < 0.02  # 5.7 ms measured


def test_doctor_reports_every_class_on_a_cpu_machine(cfg: FleetConfig) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_CONFIG"}  # the built-in classes
    fleet = Path(sys.executable).with_name("fleet")
    done = subprocess.run(
        [str(fleet), "doctor", "--json"], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [c["name"] for c in report["classes"]] == list(cfg.classes)
    gpu = next(c for c in report["classes"] if c["name"] == "gpu")
    assert gpu["binds_to"] == "cpu" and "no GPU" in gpu["notes"][0]
    assert report["runtimes"]["llama.cpp"]["gpu"] is False  # this machine's CPU build
    assert any("every class runs on the CPU" in n for n in report["notes"])


def test_a_model_that_does_not_fit_the_gpu_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fleet.sdk.devices import Gpu, GpuReport

    monkeypatch.setattr(sdk, "wants_cuda", lambda: True)
    monkeypatch.setattr(sdk, "_CONTEXT_COUNTED", [])
    gpu = Gpu(1, "NVIDIA A40", total_mb=46000, free_mb=1000)
    monkeypatch.setattr(sdk, "detect_gpus", lambda: GpuReport("580.1", [gpu]))
    # the process's first model pays for its CUDA context too (512 MB)
    with pytest.raises(MemoryError, match=r"needs about 1112 MB .* has 1000 MB free"):
        sdk.ensure_gpu_memory(600, "LLM big.gguf")
    sdk.ensure_gpu_memory(400, "LLM small.gguf")  # 912 MB: fits
    sdk.ensure_gpu_memory(900, "Whisper")  # the context is there now: 900 MB fits
