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

from fleet.constants import ASSUME_CUDA_ENV


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


def _visible(uuids: list[str]) -> list[int]:
    """Indexes this process may use: CUDA_VISIBLE_DEVICES narrows NVML's list, by index or
    by UUID (``GPU-8f3a...``, a prefix is enough, as CUDA reads it). ``uuids``: NVML's, in
    index order. CUDA stops at the first entry it cannot read, and so does this."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(len(uuids)))
    wanted = []
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < len(uuids):
            wanted.append(int(part))
        elif part.startswith("GPU-") and (
            found := [i for i, u in enumerate(uuids) if u.startswith(part)]
        ):
            wanted.append(found[0])
        else:  # "", "-1", an index or UUID this host lacks: no further GPU is visible
            break
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
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        for index in _visible(uuids):
            handle = handles[index]
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(
                    index,
                    _text(name),
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@cache
def cuda_available() -> bool:
    """Whether this process can use an NVIDIA GPU (cached: asked once per process)."""
    return bool(detect_gpus().gpus)


def gpu_layout() -> bool:
    """Whether GPU classes are laid out and guarded as on a CUDA host here: a GPU is usable,
    or ``FLEET_ASSUME_CUDA=1`` says to act as if (their ops still run on the CPU then)."""
    return os.environ.get(ASSUME_CUDA_ENV) == "1" or cuda_available()
