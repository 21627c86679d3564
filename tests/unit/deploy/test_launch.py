"""The environment and command each class's worker gets: native threads for the slots it
runs (``-c`` included), and no visible GPU for a class that does not bind to one."""

from __future__ import annotations

import os

import pytest

from fleet.config import FleetConfig
from fleet.constants import THREADS_ENV, WORKER_CLASS_ENV
from fleet.deploy.launch import native_threads, worker_env
from fleet.sdk import devices


@pytest.mark.parametrize("cls", ["cpu", "io", "npu-lite"])
def test_a_class_that_binds_to_the_cpu_sees_no_gpu(cfg: FleetConfig, cls: str) -> None:
    env = worker_env(cfg, cls, base={"CUDA_VISIBLE_DEVICES": "0"})
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env[WORKER_CLASS_ENV] == cls


def test_the_gpu_class_keeps_the_gpus_it_was_given(cfg: FleetConfig) -> None:
    assert worker_env(cfg, "gpu", base={"CUDA_VISIBLE_DEVICES": "1"})["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(cfg, "gpu", base={})


def test_native_threads_follow_the_slots_a_worker_runs(cfg: FleetConfig) -> None:
    """`fleet worker cpu -c N`: N processes share the host's cores (was: the preset's)."""
    cores = os.cpu_count() or 1
    for slots in (1, 2, 4):
        env = worker_env(cfg, "cpu", base={}, concurrency=slots)
        assert env[THREADS_ENV] == str(max(1, cores // slots)) == env["OMP_NUM_THREADS"]
    preset = cfg.classes["cpu"]
    assert worker_env(cfg, "cpu", base={})[THREADS_ENV] == str(native_threads(preset, cores, False))
    assert worker_env(cfg, "cpu", base={THREADS_ENV: "3"})[THREADS_ENV] == "3"  # yours wins


UUIDS = ["GPU-8f3a0000-aaaa", "GPU-1b2c0000-bbbb", "GPU-77770000-cccc"]


@pytest.mark.parametrize(
    ("visible", "indexes"),
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),
        ("GPU-1b2c", [1]),  # a UUID prefix, as CUDA reads it
        ("GPU-77770000-cccc,1", [2, 1]),
        ("", []),
        ("-1", []),
        ("1,GPU-ffff,0", [1]),  # CUDA stops at the first entry it cannot read
        ("5", []),
    ],
)
def test_visible_gpus_by_index_or_uuid(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, indexes: list[int]
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert devices._visible(UUIDS) == indexes
