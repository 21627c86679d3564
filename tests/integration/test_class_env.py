"""What each class's worker process really runs with: a class that does not bind to a GPU
sees none (CUDA_VISIBLE_DEVICES=""), and native threads follow its slots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.constants import THREADS_ENV, WORKER_CLASS_ENV
from fleet.deploy.launch import native_threads
from fleet.deploy.local import LocalFleet

pytestmark = pytest.mark.integration


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


def test_each_class_worker_gets_its_own_environment(local_fleet: LocalFleet) -> None:
    seen = set()
    for child in local_fleet.children:
        if not child.cls:
            continue
        env = _environ(child.proc.pid)
        spec = local_fleet.cfg.classes[child.cls]
        assert env[WORKER_CLASS_ENV] == child.cls
        if spec.device == "cuda":
            assert env.get("CUDA_VISIBLE_DEVICES") != ""  # left to the host
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == "", child.cls
        threads = native_threads(spec, os.cpu_count() or 1, False)
        assert env[THREADS_ENV] == str(threads) == env["OMP_NUM_THREADS"], child.cls
        seen.add(child.cls)
    assert seen == {"gpu", "npu-lite", "cpu", "io"}
