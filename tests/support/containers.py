"""The fleet from containers: the images built with podman (scripts/build-image.sh, from a
local Debian base where no registry is reachable) and the fleet played from `fleet kube
--local` with `podman kube play`, its credentials as podman secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/agent-fleet:test"
REDIS_IMAGE = "localhost/agent-fleet-redis:test"
CLASSES = ["gpu", "npu-lite", "cpu", "io"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def need_podman() -> None:
    """podman, set up by scripts/setup-podman.sh (root); missing: a failure where the run
    asks for every capability (FLEET_TEST_REQUIRE_SERVICES), else a skip."""
    problem = None
    if os.geteuid() != 0:
        problem = "the container tests run podman as root"
    elif shutil.which("podman") is None:
        problem = "podman is not installed: bash scripts/setup-podman.sh"
    if problem is not None:
        if os.environ.get("FLEET_TEST_REQUIRE_SERVICES"):
            pytest.fail(problem)
        pytest.skip(problem)


@dataclass
class Built:
    image: str
    redis_image: str
    seconds: float  # the build's wall time (layers already cached count as nothing)
    size_mb: float


def build_images() -> Built:
    """Both images, built from this checkout (the base image from scripts/setup-podman.sh)."""
    base = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup-podman.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if base.returncode != 0:
        raise RuntimeError(f"setup-podman.sh: {base.stderr[-2000:]}")
    env = {
        **os.environ,
        "FLEET_IMAGE_BASE": base.stdout.strip().splitlines()[-1],
        "FLEET_IMAGE_TAG": IMAGE,
        "FLEET_REDIS_TAG": REDIS_IMAGE,
    }
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=2400,
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"build-image.sh: {done.stderr[-4000:]}")
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}"))
    return Built(IMAGE, REDIS_IMAGE, seconds, size / 1e6)


@dataclass
class Played:
    """A fleet played from a manifest file; ``down`` removes its pods (the volumes stay
    unless asked)."""

    manifest: Path
    pods: list[str] = field(default_factory=list)

    def container(self, deployment: str) -> str:
        """The container name of a Deployment's (first) pod: <deployment>-pod-0-<container>."""
        names = podman("ps", "-a", "--format", "{{.Names}}").split()
        found = [n for n in names if n.startswith(f"{deployment}-pod-") and "infra" not in n]
        if not found:
            raise LookupError(f"no container of {deployment} among {names}")
        return sorted(found)[0]

    def pid(self, deployment: str) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.container(deployment)))

    def restarts(self, deployment: str) -> int:
        out = podman("inspect", "--format", "{{.RestartCount}}", self.container(deployment))
        return int(out)

    def logs(self, deployment: str, tail: int = 60) -> str:
        name = self.container(deployment)
        done = subprocess.run(
            ["podman", "logs", "--tail", str(tail), name], capture_output=True, text=True
        )
        return done.stdout + done.stderr

    def down(self, volumes: bool = False) -> None:
        podman("kube", "down", str(self.manifest), check=False, timeout=300)
        if volumes:
            podman("volume", "rm", "-f", "redis-data", check=False)


def play_local(
    manifest: Path, config: Path, password: str, flower_auth: str, port: int, values: Path
) -> Played:
    """scripts/play-local.sh, as docs/operations.md has a user run it, after a clean-up of
    what an earlier run left (its pods, the Redis volume)."""
    if manifest.exists():
        podman("kube", "down", str(manifest), check=False, timeout=300)
    for name in ("redis", "flower", "metrics", *(f"worker-{c}" for c in CLASSES)):
        podman("pod", "rm", "-f", f"{name}-pod-0", check=False)
    podman("volume", "rm", "-f", "redis-data", check=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {
        "FLEET_REDIS_PASSWORD": password,
        "FLOWER_BASIC_AUTH": flower_auth,
        "FLEET_REDIS_PORT": str(port),
        "FLEET_KUBE_FILE": str(manifest),
        "FLEET_CLI": f"{sys.executable} -m fleet.cli.main",
        "FLEET_CONFIG": str(config),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "play-local.sh"), "--values", str(values)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"play-local.sh: {done.stdout}{done.stderr}")
    return Played(manifest)
