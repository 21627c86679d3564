"""The LLMs a worker process holds: llama.cpp models and their batches, bounded.

A model is loaded per (model, ``n_ctx``): llama-cpp-python's context and the batch's KV cache
are sized by ``n_ctx``. Kept for ever, one per value a step asked for, they grew a worker from
581 to 3,960 MB over six steps with n_ctx 2048 and 4096-4100. So:

- ``n_ctx`` is bounded by the class's ``llm_max_ctx`` (:func:`check_ctx`), before anything
  loads;
- at most ``llm_models`` (model, n_ctx) pairs stay loaded (:class:`LlmCache`); loading another
  closes the least recently used one that no step is using -- its batch's context and thread,
  then the model -- and a step uses a model only inside :func:`llm_lease`;
- a model named by path must lie under the file roots, as any file an op reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fleet.sdk import (
    claim_runtime,
    class_limits,
    computes_on_cpu,
    concurrent_steps,
    ensure_gpu_memory,
    ensure_memory,
    preloader,
    safe_path,
    threads,
    wants_cuda,
    worker_class,
)
from workers.ops.batcher import Batcher, kv_cache_mb
from workers.ops.models import (
    _LOADING,
    DEFAULT_LLM,
    LLAMA_CPP,
    _loaded,
    device_lock,
    gguf_path,
    log,
)

MIN_CTX = 16


def check_ctx(n_ctx: Any) -> int:
    """``n_ctx`` if this class lets a step ask for it (``llm_max_ctx``), else a ValueError
    naming the param and the setting -- before any memory is allocated for it."""
    most = class_limits().llm_max_ctx
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not MIN_CTX <= n_ctx <= most:
        raise ValueError(
            f"n_ctx must be an integer within {MIN_CTX}..{most} (llm_max_ctx of class "
            f"{worker_class() or 'local'}), got {n_ctx!r}"
        )
    return n_ctx


@dataclass(eq=False)
class LlmEntry:
    """A loaded model, its batch once a step asked for one, and the steps using them."""

    key: tuple[str, int]
    engine: Any
    batch: Batcher | None = None
    users: int = 0

    def idle(self) -> bool:
        return self.users == 0 and (self.batch is None or self.batch.idle())

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
        self.engine.close()


class LlmCache:
    """(model, n_ctx) -> :class:`LlmEntry`, least recently used first; at most the class's
    ``llm_models`` entries once their steps end (an entry in use is never closed)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, int], LlmEntry] = OrderedDict()
        self.lock = threading.Lock()
        self.closed = 0  # entries closed to stay within the bound (for the tests)

    def take(self, model: str, n_ctx: int, batch: bool) -> LlmEntry:
        """The entry (loaded if needed), counted as in use until :meth:`give`."""
        key = (model, n_ctx)
        entry = self._find(key, batch)
        if entry is not None:
            return entry
        with _LOADING:  # models load one at a time; a thread that waited finds it loaded
            entry = self._find(key, batch)
            if entry is not None:
                return entry
            with self.lock:
                entry = self.entries.get(key)
                if entry is not None:
                    entry.users += 1  # held: not closed while its batch is made
            if entry is None:
                entry = LlmEntry(key, _load(model, n_ctx), users=1)
                with self.lock:
                    self.entries[key] = entry
            try:
                if batch and entry.batch is None:
                    entry.batch = _make_batcher(model, n_ctx, entry.engine)
            except BaseException:
                self.give(entry)
                raise
            with self.lock:
                self.entries.move_to_end(key)
        self._trim()
        return entry

    def _find(self, key: tuple[str, int], batch: bool) -> LlmEntry | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or (batch and entry.batch is None):
                return None
            entry.users += 1
            self.entries.move_to_end(key)
            return entry

    def give(self, entry: LlmEntry) -> None:
        with self.lock:
            entry.users -= 1
        self._trim()

    def _trim(self) -> None:
        """Close the least recently used idle entries beyond ``llm_models``."""
        most = class_limits().llm_models
        gone: list[LlmEntry] = []
        with self.lock:
            for key in list(self.entries):
                if len(self.entries) <= most:
                    break
                if self.entries[key].idle():
                    gone.append(self.entries.pop(key))
        for entry in gone:
            log.warning("closing LLM %s (n_ctx %d): llm_models is %d", *entry.key, most)
            entry.close()
            self.closed += 1
        if gone:
            _give_back_heap()


def _give_back_heap() -> None:
    """Hand the closed models' freed heap back to the system: glibc keeps it otherwise (a
    worker crept up 5-10 MB a load, with the models bounded; flat with this)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


CACHE = LlmCache()


@contextlib.contextmanager
def llm_lease(
    model: str = DEFAULT_LLM, n_ctx: int = 2048, batch: bool = False
) -> Iterator[LlmEntry]:
    """The loaded model (and its batch, with ``batch``) for the time of the block: the
    cache does not close it meanwhile."""
    entry = CACHE.take(model, n_ctx, batch)
    try:
        yield entry
    finally:
        CACHE.give(entry)


@preloader("llm", runtime=LLAMA_CPP)
def _warm_llm() -> None:
    # One short completion: the first inference of a process pays for page faults and
    # buffer allocation, which would otherwise land on the first real request.
    with llm_lease(DEFAULT_LLM, 2048) as entry:
        entry.engine.create_completion("Hello", max_tokens=1)


def llm(model: str = DEFAULT_LLM, n_ctx: int = 2048) -> Any:
    """The cached llama.cpp model, not leased: for tests and tools that use it at once."""
    with llm_lease(model, n_ctx) as entry:
        return entry.engine


def batcher(model: str = DEFAULT_LLM, n_ctx: int = 2048) -> Batcher:
    """The cached continuous batch of ``model``, not leased (as :func:`llm`)."""
    with llm_lease(model, n_ctx, batch=True) as entry:
        assert entry.batch is not None
        return entry.batch


def _model_file(model: str) -> Any:
    """The model's GGUF file; one named by path only under the file roots."""
    if model.endswith(".gguf"):
        safe_path(model, "LLM model file")
    return gguf_path(model)


def _load(model: str, n_ctx: int) -> Any:
    """A llama.cpp model; on a CUDA class with a GPU present every layer is offloaded."""
    claim_runtime(LLAMA_CPP)
    from llama_cpp import Llama

    path = _model_file(model)
    gpu_layers = -1 if wants_cuda() else 0
    if gpu_layers and not _llama_offloads():
        computes_on_cpu(
            LLAMA_CPP, "this llama-cpp-python is a CPU build (bash scripts/setup-gpu.sh)"
        )
        gpu_layers = 0
    # weights, plus the KV cache and compute buffers (about a quarter more for small models)
    ensure_gpu_memory(path.stat().st_size / 2**20 * 1.25 + 64, f"LLM {path.name}")

    def load() -> Any:
        with _plain_weight_buffers(_has_amx()):
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads(),
                n_threads_batch=threads(),
                n_gpu_layers=gpu_layers,
                verbose=False,
            )

    return _loaded(f"llm:{model}", load)


def _make_batcher(model: str, n_ctx: int, engine: Any) -> Batcher:
    """The continuous batch that serves ``model``'s completions in this process: one
    sequence of ``n_ctx`` tokens per step the process runs at once (its class's concurrency
    on a thread pool), on the weights ``engine`` loaded."""
    weights = engine._model.model  # llama-cpp-python's model pointer: one copy of the weights
    sequences = concurrent_steps()
    ensure_memory(
        kv_cache_mb(weights, n_ctx * sequences) * 1.1 + 32,  # + compute buffers
        f"the KV cache of LLM {model} ({sequences} sequences x {n_ctx} tokens)",
        "lower the class's concurrency (one sequence per step) or the step's n_ctx",
    )
    log.warning("LLM %s serves %d sequences of %d tokens in one batch", model, sequences, n_ctx)
    return Batcher(
        weights,
        sequences=sequences,
        n_ctx=n_ctx,
        threads=threads(),
        owner=engine,
        lock=device_lock(),
    )


def _llama_offloads() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


@functools.cache
def _has_amx() -> bool:
    """Whether this CPU has AMX tiles, on which llama.cpp (as llama-cpp-python 0.3.36 builds
    it natively) puts quantised weights in AMX buffers -- and Gemma 3's first llama_decode
    crashes there (SIGSEGV, measured on a Xeon with amx_tile/amx_int8)."""
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and " amx_tile" in line for line in info)
    except OSError:
        return False


@contextlib.contextmanager
def _plain_weight_buffers(plain: bool) -> Iterator[None]:
    """Load with llama.cpp's extra weight buffer types (AMX, repacking) off when ``plain``:
    Llama() has no argument for it, so the defaults it starts from are changed while it
    loads (models load one at a time: see _once)."""
    if not plain:
        yield
        return
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params() -> Any:
        made = default()
        made.use_extra_bufts = False
        return made

    lib.llama_model_default_params = params
    log.warning("this CPU has AMX: llama.cpp loads weights without extra buffer types")
    try:
        yield
    finally:
        lib.llama_model_default_params = default
