"""The deployment files: no Docker engine runs here, so they are linted (hadolint), validated
against the compose specification, and checked for what a deployment that keeps data needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed (it is in the dev extras: pip install -e '.[dev]')")
    return path


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def test_dockerfiles_pass_hadolint() -> None:
    files = [str(DOCKER / name) for name in ("Dockerfile", "Dockerfile.cuda", "Dockerfile.redis")]
    done = subprocess.run([_tool("hadolint"), *files], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_is_valid_compose() -> None:
    argv = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*argv, str(DOCKER / "compose.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_take_torch_from_an_explicit_index_and_cuda_llama() -> None:
    cpu = (DOCKER / "Dockerfile").read_text()
    cuda = (DOCKER / "Dockerfile.cuda").read_text()
    # the CPU torch in both: no op of a GPU class runs on torch (embeddings: npu-lite)
    assert "download.pytorch.org/whl/cpu" in cpu and "download.pytorch.org/whl/cpu" in cuda
    assert "-DGGML_CUDA=on" in cuda and "CMAKE_CUDA_ARCHITECTURES" in cuda
    assert "-DGGML_NATIVE=OFF" in cpu  # portable code, not the build host's CPU


def test_compose_keeps_data_reserves_gpus_and_checks_health() -> None:
    doc = _compose()
    services = doc["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "redis-data:/data" in redis["volumes"]
    assert "redis-data" in doc["volumes"]
    gpu = services["worker-gpu-0"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]  # one per GPU
    assert "Dockerfile.cuda" in gpu["build"]["dockerfile"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    for name, service in services.items():
        if name.startswith("worker-"):
            assert "healthcheck" in service and "ping" in str(service["healthcheck"]["test"])
            assert service["environment"]["FLEET_BROKER_URL"].startswith("redis://redis:")
    for name in ("redis", "flower", "metrics"):
        assert "healthcheck" in services[name], name


def test_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv/", ".git/", ".fleet/"):
        assert entry in ignored
