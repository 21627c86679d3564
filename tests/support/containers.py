"""The fleet from containers: the images built with podman (scripts/build-image.sh, from a
local Debian base where no registry is reachable) and the fleet played from `fleet kube
--local` with `podman kube play`, its credentials as podman secrets."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/agent-fleet:test"
REDIS_IMAGE = "localhost/agent-fleet-redis:test"


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


def secret(name: str, data: dict[str, str]) -> None:
    """A podman secret in the form `podman kube play` reads for a Kubernetes Secret: a JSON
    object of base64 values."""
    podman("secret", "rm", name, check=False)
    doc = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    done = subprocess.run(
        ["podman", "secret", "create", name, "-"],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"podman secret create {name}: {done.stderr}")


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


def play(manifest: Path) -> Played:
    """Play ``manifest`` afresh: what an earlier run left (pods, the Redis volume) goes."""
    podman("kube", "down", str(manifest), check=False, timeout=300)
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc["kind"] == "Deployment":
            podman("pod", "rm", "-f", f"{doc['metadata']['name']}-pod-0", check=False)
    podman("volume", "rm", "-f", "redis-data", check=False)
    podman("kube", "play", str(manifest), timeout=300)
    return Played(manifest)
