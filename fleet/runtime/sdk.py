"""What an op needs to know about the process it runs in: configuration, class, device,
threads, data directory, and the blob store for data passed by reference."""

from __future__ import annotations

import os
import uuid
from functools import cache
from pathlib import Path

import redis

from fleet.config import FleetConfig, load_config
from fleet.constants import BLOB_PREFIX, THREADS_ENV, WORKER_CLASS_ENV


@cache
def settings() -> FleetConfig:
    return load_config()


def worker_class() -> str | None:
    """The hardware class this worker process serves (set by ``fleet worker``)."""
    return os.environ.get(WORKER_CLASS_ENV)


def threads() -> int:
    """Threads one op may use: set per worker so that workers share the cores."""
    try:
        return max(1, int(os.environ.get(THREADS_ENV, "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


@cache
def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def wants_cuda() -> bool:
    """True when this worker's class binds to CUDA and a GPU is present."""
    cls = worker_class()
    spec = settings().classes.get(cls) if cls else None
    return spec is not None and spec.device == "cuda" and cuda_available()


def data_dir(*parts: str) -> Path:
    path = Path(os.path.expanduser(settings().data_dir), *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class BlobStore:
    """Bytes passed between steps by reference (audio, llama.cpp state), never inline."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl

    def put(self, data: bytes, kind: str = "bin") -> str:
        ref = f"{BLOB_PREFIX}{kind}:{uuid.uuid4().hex}"
        self.client.set(ref, data, ex=self.ttl)
        return ref

    def get(self, ref: str) -> bytes:
        if not isinstance(ref, str) or not ref.startswith(BLOB_PREFIX):
            raise ValueError(f"{ref!r} is not a blob reference ({BLOB_PREFIX}...)")
        data = self.client.get(ref)
        if data is None:
            raise KeyError(f"blob {ref} is unknown or expired")
        return bytes(data)  # type: ignore[arg-type]


def blobs() -> BlobStore:
    cfg = settings()
    return BlobStore(_redis(cfg.backend_url), cfg.run_ttl)
