"""Which NVIDIA GPUs this host has, from the driver's management library (NVML).

Never from torch or llama.cpp: importing a framework to ask whether CUDA exists initialises
it in the asking process, and on a CUDA host torch and a CUDA build of llama.cpp crash one
another in one process (docs/hardware.md). NVML (``nvidia-ml-py``) is a thin ctypes
binding to the driver; on a machine without the driver it reports no GPU and loads nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_mb: int
    free_mb: int


@dataclass(frozen=True)
class GpuReport:
    driver: str | None  # the NVIDIA driver's version, None without one
    gpus: list[Gpu] = field(default_factory=list)
    note: str = ""  # why there is no GPU, when there is none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _visible(count: int) -> list[int]:
    """Indexes this process may use: CUDA_VISIBLE_DEVICES (numbers) narrows NVML's list."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    wanted = []
    for part in raw.split(","):
        part = part.strip()
        if not part.isdigit():  # "", "-1", or UUIDs: treat as "none we can name"
            break
        if int(part) < count:
            wanted.append(int(part))
    return wanted


def detect_gpus() -> GpuReport:
    """The GPUs NVML sees (and CUDA_VISIBLE_DEVICES lets this process use)."""
    try:
        import pynvml
    except ImportError:
        return GpuReport(None, note="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuReport(None, note=f"no NVIDIA driver ({exc})")
    try:
        driver = str(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in _visible(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(
                    index,
                    name.decode() if isinstance(name, bytes) else str(name),
                    int(memory.total) >> 20,
                    int(memory.free) >> 20,
                )
            )
        note = "" if gpus else "the driver is loaded but no GPU is visible to this process"
        return GpuReport(driver, gpus, note)
    except pynvml.NVMLError as exc:
        return GpuReport(None, note=f"NVML failed: {exc}")
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


@cache
def cuda_available() -> bool:
    """Whether this process can use an NVIDIA GPU (cached: asked once per process)."""
    return bool(detect_gpus().gpus)
