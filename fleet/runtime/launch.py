"""Turn a hardware-class preset into the Celery worker command that serves it."""

from __future__ import annotations

import os
import sys

from fleet.config import ClassSpec, FleetConfig
from fleet.constants import THREADS_ENV, WORKER_CLASS_ENV

APP = "fleet.runtime.app:app"


def worker_argv(
    spec: ClassSpec,
    *,
    concurrency: int | None = None,
    name: str | None = None,
    loglevel: str = "INFO",
    extra: list[str] | None = None,
) -> list[str]:
    """``celery worker`` arguments for one class (run as ``python -m celery ...``)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        APP,
        "worker",
        "-Q",
        spec.queue_name,
        "-P",
        spec.pool,
        "-c",
        str(concurrency or spec.concurrency),
        "-n",
        name or f"{spec.name}-{os.getpid()}@%h",
        "--prefetch-multiplier",
        str(spec.prefetch_multiplier),
        "-l",
        loglevel,
        "-E",  # task events, for Flower
        # Heartbeats in Redis replace gossip; mingle only delays start-up by about a second.
        "--without-mingle",
        "--without-gossip",
    ]
    if spec.time_limit:
        argv += ["--time-limit", str(spec.time_limit)]
    if spec.soft_time_limit:
        argv += ["--soft-time-limit", str(spec.soft_time_limit)]
    if spec.max_tasks_per_child and spec.pool == "prefork":
        argv += ["--max-tasks-per-child", str(spec.max_tasks_per_child)]
    return argv + list(extra or [])


def worker_env(cfg: FleetConfig, cls: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a class's worker: its class, and thread caps that share the cores.

    Native libraries (BLAS, llama.cpp, torch) default to one thread per core *per process*;
    several workers on one machine would oversubscribe it. Each prefork child gets
    cores / (total slots of the compute classes), at least one.
    """
    env = dict(os.environ if base is None else base)
    env[WORKER_CLASS_ENV] = cls
    compute_slots = sum(
        s.concurrency for s in cfg.classes.values() if s.pool in ("prefork", "solo")
    )
    threads = max(1, (os.cpu_count() or 1) // max(1, compute_slots))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV):
        env.setdefault(var, str(threads))
    return env
