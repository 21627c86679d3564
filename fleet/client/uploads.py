"""Client files into the fleet, and outputs back: no step reads the client's disk.

A file becomes a blob (``fleet:blob:<kind>:...``) that any host's step reads by reference; a
folder becomes one ``tar`` blob of its regular files (ops that take a folder, such as
``memory.load_docs``, accept it); a SQLite database becomes a versioned artifact that
``db.query`` opens as ``artifact://NAME@VERSION``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from fleet.store.artifacts import SQLITE_FILE, SQLITE_KIND, ArtifactStore, BlobStore

MAX_UPLOAD_BYTES = 64 << 20  # an input, not a data set: larger data belongs in object storage


def _check_size(size: int, what: str) -> None:
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{what} is {size} bytes (upload limit {MAX_UPLOAD_BYTES})")


def pack_folder(folder: Path) -> bytes:
    """The folder's regular files (not below it, no links) as an uncompressed tar."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.is_symlink():
                total += file.stat().st_size
                _check_size(total, f"folder {folder}")
                tar.add(file, arcname=file.name, recursive=False)
    return buf.getvalue()


def upload(blobs: BlobStore, source: bytes | str | Path, kind: str | None = None) -> str:
    """A blob reference to ``source``: bytes, a file (kind from its suffix: ``wav``...) or a
    folder (kind ``tar``)."""
    if isinstance(source, bytes):
        _check_size(len(source), "upload")
        return blobs.put(source, kind or "bin")
    path = Path(source).expanduser()
    if path.is_dir():
        return blobs.put(pack_folder(path), "tar")
    if not path.is_file():
        raise FileNotFoundError(f"cannot upload {path}: no such file or folder")
    _check_size(path.stat().st_size, f"file {path}")
    return blobs.put(path.read_bytes(), kind or (path.suffix.lstrip(".").lower() or "bin"))


def put_sqlite(store: ArtifactStore, name: str, path: str | Path) -> str:
    """Publish a SQLite file as artifact ``name``; the URL db.query takes for this version."""
    file = Path(path).expanduser()
    data = file.read_bytes()
    if not data.startswith(b"SQLite format 3\0"):
        raise ValueError(f"{file} is not a SQLite database")
    _check_size(len(data), f"database {file}")
    version = store.put(SQLITE_KIND, name, {SQLITE_FILE: data})
    return f"artifact://{name}@{version}"
