"""Artifacts by reference: data one step makes and another reads, on any host.

A step on one host must not depend on another host's disk. An artifact -- a named set of
files, such as a FAISS index and its documents -- is stored in the fleet's Redis under a
content-addressed *version*, and ``<name>:latest`` names the newest. A reader asks for a
version (or the latest) and gets a local folder: each host fetches a version once into its
cache (``<data_dir>/artifacts/<kind>/<name>/<version>/``), atomically, and reads it from disk
after that. Versions never change, so a cached one is never stale.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

import redis

from fleet.constants import ARTIFACT_PREFIX, BLOB_PREFIX

# An uploaded database: the artifact kind and file that db.query's artifact:// opens.
SQLITE_KIND, SQLITE_FILE = "sqlite", "db.sqlite"

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FILE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LATEST = "LATEST"  # in a name's cache folder: the newest version this host has seen


class ArtifactStore:
    def __init__(self, client: redis.Redis, cache: Path, ttl: int) -> None:
        self.client = client
        self.cache = cache
        self.ttl = ttl  # each version expires this long after it was last written

    @staticmethod
    def _check(kind: str, name: str) -> None:
        for what, value in (("kind", kind), ("name", name)):
            if not isinstance(value, str) or not NAME.match(value):
                raise ValueError(f"artifact {what} {value!r}: 1-64 letters, digits, '_' or '-'")

    def _key(self, kind: str, name: str, *rest: str) -> str:
        return ":".join((ARTIFACT_PREFIX + kind, name, *rest))

    def put(self, kind: str, name: str, files: dict[str, bytes]) -> str:
        """Store a new version of ``kind/name``; it becomes the latest. Returns the version."""
        self._check(kind, name)
        digest = hashlib.sha256()
        for file in sorted(files):
            if not FILE.match(file):
                raise ValueError(f"artifact file name {file!r}")
            digest.update(file.encode() + b"\0" + hashlib.sha256(files[file]).digest())
        version = digest.hexdigest()[:16]
        pipe = self.client.pipeline(transaction=True)
        key = self._key(kind, name, version)
        pipe.delete(key)
        pipe.hset(key, mapping=dict(files))  # type: ignore[arg-type]
        pipe.expire(key, self.ttl)
        pipe.set(self._key(kind, name, "latest"), version, ex=self.ttl)
        pipe.execute()
        self._cache(kind, name, version, files, latest=True)  # the writing host has it
        return version

    def _cache(
        self, kind: str, name: str, version: str, files: dict[str, bytes], latest: bool
    ) -> Path:
        folder = self.cache / kind / name / version
        if not folder.is_dir():
            tmp = folder.with_name(f".{version}.{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for file, data in files.items():
                (tmp / file).write_bytes(data)
            try:
                os.rename(tmp, folder)  # atomic; another worker of this host may have won
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        if latest:
            pointer = folder.parent / LATEST
            pointer.with_suffix(f".{os.getpid()}").write_text(version)
            os.replace(pointer.with_suffix(f".{os.getpid()}"), pointer)
        return folder

    def latest(self, kind: str, name: str) -> str:
        """The newest version; if the store lost it (a broker restarted without its data),
        the newest this host has cached."""
        self._check(kind, name)
        version = self.client.get(self._key(kind, name, "latest"))
        if version is not None:
            return version.decode() if isinstance(version, bytes) else str(version)
        pointer = self.cache / kind / name / LATEST
        if pointer.is_file():
            return pointer.read_text().strip()
        raise KeyError(f"no {kind} named '{name}' in the artifact store")

    def fetch(self, kind: str, name: str, version: str | None = None) -> tuple[str, Path]:
        """(version, local folder) of ``kind/name`` -- the latest unless ``version`` is given;
        fetched from the store once per host."""
        self._check(kind, name)  # with or without a version: the name becomes a path
        newest = version is None
        version = version or self.latest(kind, name)
        if not re.fullmatch(r"[0-9a-f]{16}", version):
            raise ValueError(f"artifact version {version!r} is not a version")
        folder = self.cache / kind / name / version
        if folder.is_dir():
            return version, folder
        raw = self.client.hgetall(self._key(kind, name, version))
        if not raw:
            raise KeyError(f"{kind} '{name}' has no version {version} (expired or never stored)")
        files = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v if isinstance(v, bytes) else str(v).encode()
            )
            for k, v in raw.items()
        }
        return version, self._cache(kind, name, version, files, latest=newest)


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
