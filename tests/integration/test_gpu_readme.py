"""README's "Running on NVIDIA GPUs" block, run as written on this CPU host: a fake driver
and CUDA compiler on PATH (this host has neither), the CUDA build only printed
(FLEET_GPU_SETUP_DRY_RUN=1), and FLEET_ASSUME_CUDA=1 so that `fleet up` lays the gpu class
out as on a GPU host. And what scripts/setup-gpu.sh says without a driver or a compiler."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from fleet.deploy.local import free_port
from tests.support.servers import read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _gpu_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on NVIDIA GPUs") :]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def _fake_tools(folder: Path, nvcc: bool = True) -> Path:
    folder.mkdir()
    tools = {"nvidia-smi": 'echo "9.0"'}
    if nvcc:
        tools["nvcc"] = 'echo "Cuda compilation tools, release 12.8, V12.8.93"'
    for name, body in tools.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def _env(tools: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_CONFIG"}  # the built-in classes
    return {**env, "PATH": f"{tools}:{env['PATH']}", "COLUMNS": "200", **extra}


def test_the_readme_gpu_block_runs_as_written(tmp_path: Path) -> None:
    block = _gpu_block()
    assert "scripts/setup-gpu.sh" in block and ".venv/bin/fleet up" in block
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = _env(
        _fake_tools(tmp_path / "bin"),
        FLEET_GPU_SETUP_DRY_RUN="1",
        FLEET_ASSUME_CUDA="1",
        FLEET_BROKER_URL=url,
        FLEET_FLOWER_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        ["bash", "-e", "-c", block],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = read_until(proc, "fleet is up", 300)
    try:
        assert "fleet is up" in out, out
        # the build, for compute capability 9.0, with the CUDA compiler found
        assert "with CUDA 12.8 for compute capability 90" in out
        assert "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" in out
        assert re.search(r"\+ \.venv/bin/python -m pip install .* llama-cpp-python==[\d.]+", out)
        assert "+ .venv/bin/python -m pip install -q nvidia-cublas-cu12" in out  # none here
        assert "a process per runtime on a GPU host" in out  # the doctor's note on gpu
        # the gpu class as a GPU host runs it: a process per runtime, a queue each
        assert re.search(r"worker: gpu +queue=gpu pool=prefork", out), out
        assert re.search(r"worker: gpu-ctranslate2 +queue=gpu\.ctranslate2 pool", out), out
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=90)
    assert "stopped." in rest, rest


@pytest.mark.parametrize(
    ("tools", "said"),
    [
        ({"nvcc": True}, "no NVIDIA driver (nvidia-smi is not on PATH)"),
        ({"smi": True}, "no CUDA compiler (nvcc): install the CUDA toolkit"),
    ],
)
def test_setup_gpu_names_what_is_missing(tmp_path: Path, tools: dict[str, bool], said: str) -> None:
    folder = _fake_tools(tmp_path / "bin", nvcc="nvcc" in tools)
    if "smi" not in tools:
        (folder / "nvidia-smi").unlink()
    env = _env(folder, FLEET_GPU_SETUP_DRY_RUN="1")
    env["PATH"] = f"{folder}:/usr/bin:/bin"  # no nvcc or nvidia-smi of the host's own
    env["CUDA_HOME"] = str(tmp_path / "no-cuda")
    done = subprocess.run(
        ["bash", "scripts/setup-gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and said in done.stderr, done.stderr
