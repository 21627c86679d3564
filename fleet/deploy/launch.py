"""Turn a hardware-class preset into the Celery worker command that serves it."""

from __future__ import annotations

import os
import sys

from fleet.config import ClassSpec, FleetConfig
from fleet.constants import LANE_ENV, THREADS_ENV, WORKER_CLASS_ENV
from fleet.sdk.devices import cuda_available, gpu_layout

APP = "fleet.messaging.app:app"
CUDA_VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def host_lanes(spec: ClassSpec) -> list[str | None]:
    """The worker processes one worker of ``spec`` is on this host: a lane per runtime when
    the class has lanes and GPU classes are laid out as on a CUDA host here
    (:func:`fleet.sdk.devices.gpu_layout`), else one process serving every queue (None)."""
    return list(spec.lanes) if spec.lanes and gpu_layout() else [None]


def lane_name(name: str, spec: ClassSpec, lane: str | None) -> str:
    """A lane's node name: the worker's own for the first lane, ``<name>-<runtime>`` (before
    the ``@host``) for the others."""
    if lane is None or lane == spec.lanes[0]:
        return name
    node, at, host = name.partition("@")
    return f"{node}-{lane}{at}{host}"


def worker_argv(
    spec: ClassSpec,
    *,
    concurrency: int | None = None,
    name: str | None = None,
    loglevel: str = "INFO",
    extra: list[str] | None = None,
    lane: str | None = None,
    events: bool = True,
) -> list[str]:
    """``celery worker`` arguments for one class (run as ``python -m celery ...``), or for
    one lane of it: that lane's queue only. ``events``: task events (``-E``, for Flower; the
    configuration's ``task_events``: celery's command line would turn them off without it,
    whatever the app's settings say)."""
    queues = spec.queues if lane is None else [spec.queue_for(lane)]
    node = lane_name(name or f"{spec.name}-{os.getpid()}@%h", spec, lane)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        APP,
        "worker",
        "-Q",
        ",".join(queues),
        "-P",
        spec.pool,
        "-c",
        str(concurrency or spec.concurrency),
        "-n",
        node,
        "--prefetch-multiplier",
        str(spec.prefetch_multiplier),
        "-l",
        loglevel,
        *(["-E"] if events else []),  # task events, for Flower
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


def native_threads(spec: ClassSpec, cores: int, on_gpu: bool) -> int:
    """Native threads (llama.cpp, BLAS, torch) one process of a class may use, per host.

    What the class's processes run decides, not how many classes are configured: an I/O
    thread pool waits (1); a class on a GPU only feeds it (2); a batching pool is one compute
    process however many sequences it runs; a CPU class shares the host's
    cores between its own slots, which are busy together -- other classes are idle much of
    the time, and an LLM decoding on the CPU needs the cores (``threads`` in the class's
    config overrides this).
    """
    if spec.threads is not None:
        return spec.threads
    if spec.pool in ("threads", "gevent") and not spec.batches:
        return 1
    if on_gpu and spec.device == "cuda":
        return min(2, cores)
    return max(1, cores // max(1, spec.compute_processes))


def worker_env(
    cfg: FleetConfig,
    cls: str,
    base: dict[str, str] | None = None,
    concurrency: int | None = None,
    lane: str | None = None,
) -> dict[str, str]:
    """Environment for a class's worker: its class; its native thread count
    (:func:`native_threads`, for the slots it runs: ``concurrency`` when given, as
    ``fleet worker -c`` sets it) for every library that reads one; and, for a class that
    does not bind to a GPU, no visible GPU (``CUDA_VISIBLE_DEVICES=""``): a CUDA build of
    llama.cpp would otherwise open every GPU and offload large prefills even with no layer
    on it, and torch beside it in the process can crash. A lane's process also gets its
    runtime (``FLEET_LANE``): it loads no other."""
    env = dict(os.environ if base is None else base)
    env[WORKER_CLASS_ENV] = cls
    spec = cfg.classes[cls]
    if concurrency is not None:
        spec = spec.model_copy(update={"concurrency": concurrency})
    on_gpu = spec.device == "cuda" and cuda_available()
    threads = native_threads(spec, os.cpu_count() or 1, on_gpu)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV):
        env.setdefault(var, str(threads))
    if spec.device != "cuda":
        env[CUDA_VISIBLE_ENV] = ""
    if lane is not None:
        env[LANE_ENV] = lane
    else:
        env.pop(LANE_ENV, None)
    return env
