"""The op SDK: everything an op author imports, in one place.

```python
from fleet.sdk import op, preloader, settings, blobs, safe_path
```

- :func:`op` and :func:`preloader` register ops and model loaders (:mod:`fleet.sdk.registry`,
  which also finds op modules through the ``agent_fleet.ops`` entry points);
- :mod:`fleet.sdk.process` says what the process an op runs in offers: the configuration,
  its class, device and threads, the data folder, file roots, the blob and artifact stores,
  deadlines that hold on thread pools, and the one-GPU-runtime-per-process rule;
- :mod:`fleet.sdk.devices` finds GPUs through the driver, without loading a framework;
- :mod:`fleet.sdk.step` says which step an op runs for (run, node, attempt, deadline) and
  gives tools with side effects an idempotency key.

Nothing here imports the engine, the router or Celery: an op module stays cheap to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.sdk.registry import OpSpec, Registry, RuntimeSpec, op, preloader
from fleet.sdk.step import (
    StepContext,
    current_step,
    note_load,
    note_spend,
    stream_text,
    streaming,
    time_left,
)

if TYPE_CHECKING:
    from fleet.config import EndpointSpec
    from fleet.constants import BLOB_PREFIX
    from fleet.sdk.devices import GpuReport, cuda_available, detect_gpus
    from fleet.sdk.process import (
        artifacts,
        blobs,
        claim_runtime,
        class_limits,
        computes_on_cpu,
        concurrent_steps,
        data_dir,
        ensure_gpu_memory,
        ensure_memory,
        file_roots,
        run_within,
        safe_path,
        settings,
        threads,
        wants_cuda,
        worker_class,
        writable_path,
    )
    from fleet.store.artifacts import SQLITE_FILE, SQLITE_KIND, ArtifactStore, BlobStore

# Loaded on first use: registering ops (`fleet.sdk.registry`) must not import redis.
_LAZY = {
    "BLOB_PREFIX": "fleet.constants",
    "EndpointSpec": "fleet.config",
    "GpuReport": "fleet.sdk.devices",
    "cuda_available": "fleet.sdk.devices",
    "detect_gpus": "fleet.sdk.devices",
    **dict.fromkeys(
        [
            "artifacts",
            "blobs",
            "claim_runtime",
            "class_limits",
            "computes_on_cpu",
            "concurrent_steps",
            "data_dir",
            "ensure_gpu_memory",
            "ensure_memory",
            "file_roots",
            "run_within",
            "safe_path",
            "settings",
            "threads",
            "wants_cuda",
            "worker_class",
            "writable_path",
        ],
        "fleet.sdk.process",
    ),
    **dict.fromkeys(
        ["SQLITE_FILE", "SQLITE_KIND", "ArtifactStore", "BlobStore"], "fleet.store.artifacts"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fleet.sdk' has no attribute {name!r}")


__all__ = [
    "BLOB_PREFIX",
    "SQLITE_FILE",
    "SQLITE_KIND",
    "ArtifactStore",
    "BlobStore",
    "EndpointSpec",
    "GpuReport",
    "OpSpec",
    "Registry",
    "RuntimeSpec",
    "StepContext",
    "artifacts",
    "blobs",
    "claim_runtime",
    "class_limits",
    "computes_on_cpu",
    "concurrent_steps",
    "cuda_available",
    "current_step",
    "data_dir",
    "detect_gpus",
    "ensure_gpu_memory",
    "ensure_memory",
    "file_roots",
    "note_load",
    "note_spend",
    "op",
    "preloader",
    "run_within",
    "safe_path",
    "settings",
    "stream_text",
    "streaming",
    "threads",
    "time_left",
    "wants_cuda",
    "worker_class",
    "writable_path",
]
