"""What an op needs to know about the process it runs in: configuration, class, device,
threads, data directory, and the blob store for data passed by reference."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis

from fleet.config import ClassSpec, FleetConfig, load_config
from fleet.constants import LANE_ENV, THREADS_ENV, WORKER_CLASS_ENV
from fleet.errors import RuntimeRefused
from fleet.paths import EXAMPLES, PACKAGE
from fleet.sdk.devices import cuda_available, detect_gpus, gpu_layout
from fleet.store.artifacts import ArtifactStore, BlobStore
from fleet.store.connection import connect

log = logging.getLogger("fleet.process")


@cache
def settings() -> FleetConfig:
    return load_config()


def worker_class() -> str | None:
    """The hardware class this worker process serves (set by ``fleet worker``)."""
    return os.environ.get(WORKER_CLASS_ENV)


def class_spec() -> ClassSpec | None:
    """The configured preset of the class this worker process serves, if any."""
    cls = worker_class()
    return settings().classes.get(cls) if cls else None


def class_limits() -> ClassSpec:
    """What this worker's class lets an op allocate (``llm_max_ctx``, ``llm_models``): its
    configured preset, else the built-in defaults (a process that serves no class)."""
    return class_spec() or ClassSpec(name=worker_class() or "local")


def threads() -> int:
    """Threads one op may use: set per worker so that workers share the cores."""
    try:
        return max(1, int(os.environ.get(THREADS_ENV, "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def concurrent_steps() -> int:
    """Steps this process runs at once: its class's concurrency on a thread pool, else 1 (a
    prefork child runs one step at a time). A batching op sizes its batch by it."""
    spec = class_spec()
    return spec.concurrency if spec is not None and spec.pool in ("threads", "gevent") else 1


_CLAIMED: list[str] = []  # native GPU runtimes this process has loaded models with


def lane() -> str | None:
    """The runtime this process serves as a lane of its GPU class (ClassSpec.lanes), if any."""
    return os.environ.get(LANE_ENV) or None


def claim_runtime(name: str) -> None:
    """Say that this process is about to load a model with runtime ``name``. On a CUDA-bound
    process (:func:`cuda_bound`) a second GPU runtime, or one other than the process's lane,
    is refused with :class:`RuntimeRefused` before anything loads -- torch and a CUDA
    llama.cpp in one process kill it -- and the step goes to a process that serves it."""
    if name in _CLAIMED:
        return
    if cuda_bound():
        served = lane()
        if served is not None and name != served:
            raise RuntimeRefused(
                f"this {worker_class()} worker process is its {served} lane; {name} runs in "
                f"the class's {name} lane (queue {_lane_queue(name)})"
            )
        if _CLAIMED:
            raise RuntimeRefused(
                f"this {worker_class()} worker process already runs {_CLAIMED[0]} on the GPU; "
                f"{name} must run in another process: list both in classes.{worker_class()}"
                ".runtimes (a lane each) or run it in another class"
            )
    _CLAIMED.append(name)


def _lane_queue(runtime: str) -> str:
    spec = class_spec()
    return spec.queue_for(runtime) if spec is not None else "?"


# What a process's first CUDA use takes on the GPU before any model: the runtime's context
# and its kernels' module images (300-600 MB on recent GPUs; NVML's free memory already
# counts what other processes hold).
CUDA_CONTEXT_MB = 512
_CONTEXT_COUNTED: list[bool] = []  # once per process: later models share the context


def ensure_gpu_memory(need_mb: float, what: str) -> None:
    """Before loading ``what`` onto this process's GPU: a clear error when it cannot fit
    (free memory from the driver, less a CUDA context for the process's first model),
    instead of an out-of-memory crash halfway through."""
    if not wants_cuda():
        return
    report = detect_gpus()
    if not report.gpus:
        return
    gpu = report.gpus[0]
    if not _CONTEXT_COUNTED:
        need_mb += CUDA_CONTEXT_MB
    if gpu.free_mb < need_mb:
        raise MemoryError(
            f"{what} needs about {need_mb:.0f} MB of GPU memory; GPU {gpu.index} ({gpu.name}) "
            f"has {gpu.free_mb} MB free of {gpu.total_mb} MB: give this worker another GPU "
            "(fleet worker CLASS --device N) or a smaller model"
        )
    _CONTEXT_COUNTED.append(True)


def available_host_mb() -> float | None:
    """Memory the kernel can give this process now (MemAvailable), in MB; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ensure_memory(need_mb: float, what: str, advice: str) -> None:
    """Before allocating ``what`` on this process's device (its GPU when it binds to CUDA,
    else host memory): a clear error naming ``advice`` when it cannot fit."""
    if wants_cuda():
        ensure_gpu_memory(need_mb, what)
        return
    free = available_host_mb()
    if free is not None and need_mb > free:
        raise MemoryError(
            f"{what} needs about {need_mb:.0f} MB of memory; this host has {free:.0f} MB "
            f"available: {advice}"
        )


_ON_CPU: dict[str, str] = {}  # runtime -> why this GPU-bound process runs it on the CPU


def computes_on_cpu(runtime: str, why: str) -> None:
    """Say that ``runtime`` computes on the CPU in this process although its class binds to
    a GPU that is present (a CPU build, say): logged once, loudly, and every step of the
    runtime's ops says so in its trace -- never a silent fallback."""
    if runtime not in _ON_CPU:
        _ON_CPU[runtime] = why
        log.warning("%s worker: %s runs on the CPU, not the GPU: %s", worker_class(), runtime, why)


def cpu_fallback(runtime: str | None) -> str | None:
    """Why ``runtime`` computes on the CPU in this GPU-bound process, if it does."""
    return _ON_CPU.get(runtime) if runtime else None


def wants_cuda() -> bool:
    """True when this worker's class binds to CUDA and a GPU is present."""
    spec = class_spec()
    return spec is not None and spec.device == "cuda" and cuda_available()


def cuda_bound() -> bool:
    """True when this process is guarded as a GPU process: its class binds to CUDA and a GPU
    is present, or ``FLEET_ASSUME_CUDA=1`` lays the fleet out as on a GPU host (tests of a
    class layout on a CPU machine; the ops still run on the CPU)."""
    spec = class_spec()
    return spec is not None and spec.device == "cuda" and gpu_layout()


NEVER = (Path("/proc"), Path("/sys"), Path("/dev"))


def file_roots() -> list[Path]:
    """Folders ops may read files from: data_dir, the packaged examples, ``file_roots``."""
    extra = [Path(os.path.expanduser(r)) for r in settings().file_roots]
    return [p.resolve() for p in (data_dir(), EXAMPLES, *extra)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def safe_path(path: str | Path, what: str = "file") -> Path:
    """``path`` resolved (symlinks followed, ``..`` gone), if it lies under a file root.

    Ops that read or write files the caller names go through this: a workflow must not make
    a worker read /etc/shadow, its own /proc/self/environ, or write over its files.
    """
    real = Path(os.path.expanduser(str(path))).resolve()
    roots = file_roots()
    if any(_inside(real, never) for never in NEVER) or not any(_inside(real, r) for r in roots):
        shown = ", ".join(str(r) for r in roots)
        raise PermissionError(
            f"{what} {str(path)!r} is outside the folders ops may use ({shown}); "
            "add a folder with file_roots / FLEET_FILE_ROOTS in the fleet config"
        )
    return real


CACHES = ("artifacts", "models")  # data_dir's folders the fleet fills itself


def writable_path(path: str | Path, what: str = "output file") -> Path:
    """``path`` resolved, if an op may write it: under a file root (as :func:`safe_path`), but
    never in the installed package (its examples and data) or the caches the fleet keeps
    under the data folder (artifacts, models): a workflow must not overwrite what every
    other run reads."""
    real = safe_path(path, what)
    kept = [PACKAGE, *(data_dir() / c for c in CACHES)]
    for root in kept:
        if _inside(real, root.resolve()):
            raise PermissionError(
                f"{what} {str(path)!r} is inside {root}, which ops may read but not write; "
                f"write under {data_dir()} (outside {', '.join(CACHES)}) or a file root"
            )
    return real


def data_dir(*parts: str) -> Path:
    path = Path(os.path.expanduser(settings().data_dir), *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def _redis(url: str) -> redis.Redis:
    return connect(url, max_connections=settings().redis_max_connections)


def blobs() -> BlobStore:
    cfg = settings()
    return BlobStore(_redis(cfg.backend_url), cfg.run_ttl)


def artifacts() -> ArtifactStore:
    """Named, versioned file sets shared by every host (see :mod:`fleet.store.artifacts`)."""
    cfg = settings()
    return ArtifactStore(_redis(cfg.backend_url), data_dir("artifacts"), cfg.artifact_ttl)


T = TypeVar("T")


def run_within(seconds: float, work: Callable[[], T], late: Callable[[], BaseException]) -> T:
    """``work()`` with a hard deadline, where nothing can be interrupted (a thread pool, a
    socket that drips a byte at a time): it runs in a daemon thread; past ``seconds`` the
    caller raises ``late()`` and goes on, and the thread is abandoned to end on its own."""
    box: dict[str, Any] = {}
    context = contextvars.copy_context()  # the current step (fleet.sdk.step) goes along

    def run() -> None:
        try:
            box["result"] = context.run(work)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    helper = threading.Thread(target=run, name="fleet-deadline", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise late()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
