"""Continuous batching on llama.cpp: one model and one context serve many sequences at once.

A worker process's LLM steps (threads of a thread-pool worker) hand their requests to one
:class:`Batcher` per model. Its scheduler thread owns a llama.cpp context with one KV
sequence per slot and runs a loop: admit waiting requests into free slots (their prompt
tokens join the next ``llama_decode``), decode one token for every running sequence in the
same batch, sample each sequence with its own sampler chain (temperature, seed, grammar),
and retire the sequences that stopped. A request joins between decode steps and leaves as
soon as it is done: nobody waits for the slowest.

Prefix reuse: a retired sequence's KV stays in its slot. A new request takes the free slot
whose cached tokens share the longest prefix with its prompt (least recently used among
equals) and prefills only the tokens after that prefix: an agent loop's next round, or
another request with the same system prompt, pays prefill for its new tokens only.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from workers.ops.llm_sampling import GREEDY_EPSILON, GrammarDeadEnd, Sampler

log = logging.getLogger("fleet.batcher")

# Once other model work of the process waits for the device, the batch keeps it this long
# at most before letting that work run (then it queues again behind it).
SLICE_S = 0.5
# A shorter shared prefix is prefilled again: it saves next to nothing, and a prefill that
# starts mid-prompt sums in another order (llama.cpp is not batch-invariant), which can flip
# a greedy near-tie against the cold text.
MIN_REUSE = 32


class DeviceSlot(Protocol):
    """The process's turn on its device (``workers.ops.models.DeviceLock``)."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def waiting(self) -> int: ...


class BatchError(RuntimeError):
    """llama.cpp refused a batch (out of KV memory, a failed decode)."""


@dataclass
class Request:
    """One completion: the prompt's tokens in, text and counts out."""

    tokens: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None
    # Filled by the batcher:
    generated: list[int] = field(default_factory=list)
    text: bytes = b""
    finish_reason: str = ""
    reused: int = 0  # prompt tokens whose KV came from the slot's cache
    first_token_s: float = 0.0  # from submission to the first sampled token
    error: BaseException | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)

    def result_text(self) -> str:
        return self.text.decode("utf-8", errors="ignore")

    def take(self, token: int, piece: bytes, end: bool) -> str | None:
        """Add a sampled token (``end``: it ends the text); the finish reason once the
        request is done (an end token, a stop string, max_tokens), else None. One rule for
        every way of generating: a batch sequence and a restored llm.decode state."""
        if not self.generated and not self.finish_reason and not self.first_token_s:
            self.first_token_s = time.perf_counter() - self.submitted
        if end:
            return "stop"
        self.generated.append(token)
        self.text += piece
        if self.stop and self._cut_at_stop():
            return "stop"
        return "length" if len(self.generated) >= self.max_tokens else None

    def _cut_at_stop(self) -> bool:
        text = self.result_text()
        hits = [i for i in (text.find(s) for s in self.stop if s) if i >= 0]
        if not hits:
            return False
        self.text = text[: min(hits)].encode()
        return True


def token_piece(vocab: Any, token: int) -> bytes:
    """The bytes of one token (special tokens render as nothing)."""
    import llama_cpp as lc

    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV the sequence holds
    used: float = 0.0
    request: Request | None = None
    sampler: Sampler | None = None
    pos: int = 0
    pending: int = -1  # token sampled but not yet decoded
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet in the KV cache


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _meta_int(model: Any, key: str) -> int | None:
    import llama_cpp as lc

    buf = ctypes.create_string_buffer(64)
    if lc.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) < 0:
        return None
    try:
        return int(buf.value.decode())
    except ValueError:
        return None


def kv_cache_mb(model: Any, tokens: int) -> float:
    """The f16 KV cache ``tokens`` positions need across all layers, in MB."""
    import llama_cpp as lc

    buf = ctypes.create_string_buffer(64)
    lc.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
    arch = buf.value.decode() or "llama"
    n_head = max(1, lc.llama_model_n_head(model))
    head = lc.llama_model_n_embd(model) // n_head
    k_len = _meta_int(model, f"{arch}.attention.key_length") or head
    v_len = _meta_int(model, f"{arch}.attention.value_length") or head
    layers, kv_heads = int(lc.llama_model_n_layer(model)), int(lc.llama_model_n_head_kv(model))
    return layers * kv_heads * (k_len + v_len) * 2 * tokens / 2**20


class Batcher:
    """Serve :class:`Request` s on ``sequences`` KV sequences of ``n_ctx`` tokens each."""

    def __init__(
        self,
        model: Any,
        *,
        sequences: int,
        n_ctx: int,
        threads: int,
        n_batch: int = 512,
        owner: Any = None,
        min_reuse: int = MIN_REUSE,
        lock: DeviceSlot | None = None,
    ) -> None:
        import llama_cpp as lc

        self._lc = lc
        self.model = model  # a llama_model pointer
        self.owner = owner  # what owns the model (kept alive as long as we are)
        self.vocab = lc.llama_model_get_vocab(model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.sequences = sequences
        self.n_ctx = n_ctx
        self.n_batch = max(n_batch, 1)
        self.min_reuse = min_reuse
        # The process's model work takes turns with the batch (models.DeviceLock).
        self.lock = lock
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx * sequences
        params.n_batch = max(self.n_batch, sequences)
        params.n_ubatch = min(512, params.n_batch)
        params.n_seq_max = sequences
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False  # each sequence its own n_ctx: no slot starves another
        params.swa_full = True  # a sliding-window cache must keep a reused prefix whole
        params.no_perf = True
        params.flash_attn_type = 0  # off, as in llama-cpp-python: one sequence alone gets
        # the same numbers as Llama() (llm.prefill / llm.decode) gives it
        self.ctx = lc.llama_init_from_model(model, params)
        if not self.ctx:
            raise BatchError(f"llama.cpp could not create a context of {sequences} sequences")
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(params.n_batch, 0, 1)
        self.slots = [_Slot(seq=i) for i in range(sequences)]
        self.waiting: deque[Request] = deque()
        self.cond = threading.Condition()
        self.decodes = 0
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="llm-batcher", daemon=True)
        self.thread.start()

    # -- the callers' side ------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        if self.closed:
            raise BatchError("the LLM was unloaded from this process")
        if len(request.tokens) + request.max_tokens > self.n_ctx:
            raise ValueError(
                f"prompt is {len(request.tokens)} tokens; with max_tokens={request.max_tokens} "
                f"it exceeds the context window of {self.n_ctx} tokens per sequence"
            )
        with self.cond:
            self.waiting.append(request)
            self.cond.notify()
        return request

    def wait(self, request: Request, timeout: float | None = None) -> Request:
        if not request.done.wait(timeout):
            request.cancelled = True  # the scheduler frees its slot at the next step
            raise TimeoutError("the LLM did not finish before the step's deadline")
        if request.error is not None:
            raise request.error
        return request

    def busy(self) -> int:
        """Sequences running now (the batch occupancy)."""
        return sum(1 for s in self.slots if s.request is not None)

    def idle(self) -> bool:
        """Nothing waiting and no sequence running: it may be closed."""
        with self.cond:
            return not self._work()

    def close(self) -> None:
        """Stop the scheduler thread and free the context (a model the process unloads).
        A request still inside fails; a closed batch takes none."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()
        with self.cond:
            left = list(self.waiting) + [s.request for s in self.slots if s.request]
            self.waiting.clear()
        for slot in self.slots:
            if slot.sampler is not None:
                slot.sampler.close()
            slot.request, slot.sampler = None, None
        for request in left:
            request.error = BatchError("the LLM was unloaded from this process")
            request.done.set()
        self._lc.llama_batch_free(self.batch)
        self._lc.llama_free(self.ctx)

    # -- the scheduler thread -----------------------------------------------------------------

    def _work(self) -> bool:
        return bool(self.waiting) or any(s.request for s in self.slots)

    def _loop(self) -> None:
        held_since: float | None = None  # while this thread holds the device lock
        while True:
            if held_since is not None and (
                not self._work()
                or self.closed
                or (
                    self.lock is not None
                    and self.lock.waiting()
                    and time.monotonic() - held_since >= SLICE_S
                )
            ):
                assert self.lock is not None
                self.lock.release()  # the other model work's turn
                held_since = None
            with self.cond:
                while not self._work() and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
            if held_since is None and self.lock is not None:
                self.lock.acquire()
                held_since = time.monotonic()
            try:
                self._step()
            except Exception as exc:
                log.exception("LLM batch failed")
                self._fail_all(exc)

    def _step(self) -> None:
        """One llama_decode: a token for every decoding sequence, then prompt chunks of
        the sequences still prefilling, as far as the batch has room (a long prompt takes
        several steps and never stalls the others' decoding for more than one batch)."""
        self.batch.n_tokens = 0
        outputs: list[tuple[_Slot, int]] = []
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled:
                self._retire(slot, "cancelled")
            elif slot.request is not None and not slot.todo:
                outputs.append((slot, self._add(slot.pending, slot.pos, slot.seq)))
                slot.cached.append(slot.pending)
                slot.pos += 1
        self._admit()
        for slot in self.slots:
            room = self.batch_capacity - int(self.batch.n_tokens)
            if slot.request is None or not slot.todo or room <= 0:
                continue
            chunk, slot.todo = slot.todo[:room], slot.todo[room:]
            for token in chunk:
                self._add(token, slot.pos, slot.seq, False)
                slot.cached.append(token)
                slot.pos += 1
        if not self.batch.n_tokens:
            return
        rc = self._lc.llama_decode(self.ctx, self.batch)
        self.decodes += 1
        if rc != 0:
            raise BatchError(f"llama_decode returned {rc} for a batch of {self.batch.n_tokens}")
        for slot, index in outputs:
            self._sample(slot, index)

    def _add(self, token: int, pos: int, seq: int, logits: bool = True) -> int:
        b, i = self.batch, int(self.batch.n_tokens)
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    @property
    def batch_capacity(self) -> int:
        return max(self.n_batch, self.sequences)

    def _admit(self) -> None:
        """Give waiting requests the free slots: each takes the one whose cached tokens
        share the longest reusable prefix with its prompt (least recently used among
        equals)."""
        with self.cond:
            while self.waiting:
                request = self.waiting[0]
                free = [s for s in self.slots if s.request is None]
                if not request.cancelled and not free:
                    return
                self.waiting.popleft()
                if request.cancelled:
                    request.finish_reason = "cancelled"
                    request.done.set()
                    continue
                try:
                    sampler = self._sampler(request)
                except ValueError as exc:
                    request.error = exc
                    request.done.set()
                    continue
                slot = max(free, key=lambda s: (self._reuse(s, request), -s.used))
                self._start(slot, request, sampler)

    def _reuse(self, slot: _Slot, request: Request) -> int:
        """Prompt tokens ``request`` would find cached in ``slot``: 0 below ``min_reuse``,
        so a request that can reuse nothing takes the least recently used slot, not the one
        whose cache starts with the same few words (another run's prefix, evicted for
        nothing)."""
        shared = _common_prefix(slot.cached, request.tokens)
        return shared if shared >= self.min_reuse else 0

    def _start(self, slot: _Slot, request: Request, sampler: Sampler | None) -> None:
        """The prompt up to its last token is prefilled (in chunks); the last token goes in
        with the next step's decoding tokens, and its logits start the answer. So the
        first token's logits come from the same shape of batch however much of the prompt
        was cached, and as llm.decode's after a handed-over prefill: alone in the batch, a
        request gets the same tokens cold, warm and split (llama.cpp's kernels are not
        batch-invariant: a different batch shape can flip a near-tie)."""
        keep = min(_common_prefix(slot.cached, request.tokens), len(request.tokens) - 1)
        if keep < self.min_reuse:
            keep = 0
        if not self._lc.llama_memory_seq_rm(self.memory, slot.seq, keep, -1):
            self._lc.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            keep = 0
        slot.request, slot.sampler = request, sampler
        request.reused = keep
        slot.cached = list(request.tokens[:keep])
        slot.todo = list(request.tokens[keep:-1])
        slot.pending = request.tokens[-1]
        slot.pos = keep

    def _sampler(self, request: Request) -> Sampler | None:
        """The request's :class:`Sampler` (None for plain greedy decoding: an argmax, as
        building llama.cpp's candidate array over a 262k vocabulary costs more than the
        argmax). A grammar that does not parse is a ValueError: its own request fails."""
        if not request.grammar and request.temperature <= GREEDY_EPSILON:
            return None
        return Sampler(self.vocab, self.n_vocab, request.grammar, request.temperature, request.seed)

    def _sample(self, slot: _Slot, index: int) -> None:
        request = slot.request
        assert request is not None
        lc = self._lc
        if slot.sampler is None:  # greedy, unconstrained: the argmax of the logits
            logits = np.ctypeslib.as_array(
                lc.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
            )
            token = int(logits.argmax())
        else:
            try:
                token = slot.sampler.sample(self.ctx, index)
            except GrammarDeadEnd as exc:  # this request alone cannot go on
                request.error = exc
                self._retire(slot, "error")
                return
        end = bool(lc.llama_vocab_is_eog(self.vocab, token))
        reason = request.take(token, b"" if end else token_piece(self.vocab, token), end)
        if reason is not None:
            self._retire(slot, reason)
        else:
            slot.pending = token

    def _retire(self, slot: _Slot, reason: str) -> None:
        request = slot.request
        slot.request, slot.todo = None, []
        slot.used = time.monotonic()
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None
        if request is not None:
            request.finish_reason = reason
            request.done.set()

    def _fail_all(self, exc: BaseException) -> None:
        for slot in self.slots:
            if slot.request is not None:
                slot.request.error = exc
                self._retire(slot, "error")
            slot.cached, slot.todo = [], []
            self._lc.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
