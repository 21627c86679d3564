"""LLM ops on llama.cpp: prompt building for a base model, generation, and generation split
into prefill and decode that may run on different classes.

``llm.generate`` runs in the process's continuous batch (:mod:`workers.ops.batcher`): the
steps a thread-pool worker runs at once share one model and one context, a sequence each,
and a prompt that starts like an earlier one (an agent loop's next round) reuses its KV.

``llm.prefill`` evaluates the prompt and saves llama.cpp's state (the KV cache and the prompt
tokens) to Redis; the message carries only a reference. ``llm.decode`` on another worker
restores it and generates: llama.cpp recognises the cached prompt and evaluates one token of
it instead of all of them.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from typing import Any

from fleet.sdk import blobs, op, streaming, time_left
from workers.ops.batcher import Request, kv_cache_mb, token_piece
from workers.ops.endpoint import complete, this_workers_endpoint
from workers.ops.general import SAMPLE_TEXT
from workers.ops.llm_models import check_ctx, llm_lease
from workers.ops.llm_sampling import Sampler, check_grammar
from workers.ops.llm_stream import wait_streaming
from workers.ops.models import DEFAULT_LLM, LLAMA_CPP, LOADS, device_lock

SAMPLE_PROMPT = (
    f"Context:\n{SAMPLE_TEXT}\n\nQuestion: How long does standard shipping take?\nAnswer:"
)

MODEL_CLASSES = ("gpu", "npu-lite", "cpu")
STATE_FORMAT = 1


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(f"- {_as_text(v)}" for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


@op("llm.prompt", classes=("cpu", "io", "npu-lite", "gpu"), outputs=("prompt", "prefix"))
def build_prompt(
    question: Any,
    instruction: str = "",
    context: Any = None,
    facts: Any = None,
    examples: list[dict[str, str]] | None = None,
    question_label: str = "Question",
    answer_label: str = "Answer",
    answer_prefix: str = "",
) -> dict[str, str]:
    """A completion prompt for a base model: instruction, context, few-shot examples, question.

    ``answer_prefix`` starts the answer for the model (a small base model follows a good
    opening far better than an instruction); pass the ``prefix`` output to llm.generate so
    that it is part of the returned text.
    """
    parts = [instruction.strip()] if instruction.strip() else []
    if context not in (None, "", []):
        parts.append(f"Context:\n{_as_text(context)}")
    if facts not in (None, "", []):
        parts.append(f"Facts:\n{_as_text(facts)}")
    for ex in examples or []:
        parts.append(f"{question_label}: {ex['input']}\n{answer_label}: {ex['output']}")
    opening = f" {answer_prefix.strip()}" if answer_prefix.strip() else ""
    parts.append(f"{question_label}: {_as_text(question).strip()}\n{answer_label}:{opening}")
    return {"prompt": "\n\n".join(parts), "prefix": answer_prefix.strip()}


def _tokens(model: Any, prompt: Any, max_tokens: int) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty")
    if not 1 <= max_tokens <= 4096:
        raise ValueError(f"max_tokens must be within 1..4096, got {max_tokens}")
    tokens: list[int] = model.tokenize(prompt.encode(), add_bos=True)
    limit = model.n_ctx()  # a batch sequence's context is the same n_ctx
    if len(tokens) + max_tokens > limit:
        raise ValueError(
            f"prompt is {len(tokens)} tokens; with max_tokens={max_tokens} it exceeds the "
            f"context window of {limit} tokens"
        )
    return tokens


MAX_CHOICES = 200


def gbnf_choices(choices: list[str]) -> str:
    """A GBNF grammar whose only sentences are ``choices`` (a constrained decode)."""
    if not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES:
        raise ValueError(f"choices must be a list of 1..{MAX_CHOICES} strings")
    alts = []
    for c in choices:
        if not isinstance(c, str) or not c.strip():
            raise ValueError("every choice must be a non-empty string")
        escaped = c.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        alts.append(f'"{escaped}"')
    # An optional leading space: after "Answer:" the model's own next token is " yes", and
    # forcing "yes" without it would judge the choices by unnatural tokens.
    return 'root ::= " "? (' + " | ".join(alts) + ")"


def _constraint(
    model: Any, grammar: str | None, choices: list[str] | None, max_tokens: int
) -> tuple[str | None, int]:
    """(the GBNF text or None, max_tokens enough for the longest choice); the grammar is
    checked here against the model's vocabulary (:func:`check_grammar`), so that a bad one
    fails its own step before it reaches a batch."""
    if grammar and choices:
        raise ValueError("give grammar or choices, not both")
    if grammar is not None and not isinstance(grammar, str):
        raise ValueError("grammar must be a GBNF text")
    text: str | None = None
    if choices:
        longest = max(len(model.tokenize(c.encode(), add_bos=False)) for c in choices)
        text = gbnf_choices(choices)
        max_tokens = max(max_tokens, longest + 1)
    else:
        text = grammar or None
    if text is not None:
        check_grammar(model._model.vocab, model.n_vocab(), text)
    return text, max_tokens


def _request(
    model: Any,
    prompt: str,
    max_tokens: int,
    temperature: float,
    stop: list[str] | None,
    seed: int,
    grammar: str | None,
    choices: list[str] | None,
) -> Request:
    """The completion a step asks for: its prompt's tokens (checked against the context)
    and its constraint (a grammar ignores stop strings)."""
    tokens = _tokens(model, prompt, max_tokens)
    constraint, max_tokens = _constraint(model, grammar, choices, max_tokens)
    return Request(
        tokens=tokens,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        stop=[] if constraint is not None else [s for s in stop or [] if s],
        grammar=constraint,
    )


def _result(request: Request, prefix: str) -> dict[str, Any]:
    return {
        "text": f"{prefix}{request.result_text()}".strip(),
        "tokens": len(request.generated),
        "prompt_tokens": len(request.tokens),
        "finish_reason": request.finish_reason,
    }


def _complete(
    model: Any,
    prompt: str,
    max_tokens: int,
    temperature: float,
    stop: list[str] | None,
    seed: int,
    prefix: str = "",
    grammar: str | None = None,
    choices: list[str] | None = None,
) -> dict[str, Any]:
    """Generate on ``model``'s own context (a restored llm.decode state) by the rules of the
    batch (:meth:`Request.take`): the same tokens, text and counts as llm.generate."""
    import llama_cpp as lc

    request = _request(model, prompt, max_tokens, temperature, stop, seed, grammar, choices)
    vocab = model._model.vocab
    tokens = request.tokens
    # What the context holds already (a restored prompt) is kept; its last token is
    # evaluated again, so its logits start the answer
    held = model.input_ids[: model.n_tokens].tolist()
    keep = 0
    while keep < min(len(held), len(tokens) - 1) and held[keep] == tokens[keep]:
        keep += 1
    model.n_tokens = keep  # eval() drops the KV past it
    sampler = Sampler(vocab, model.n_vocab(), request.grammar, temperature, seed)
    try:
        model.eval(tokens[keep:])
        while True:
            token = sampler.sample(model._ctx.ctx, -1)
            end = bool(lc.llama_vocab_is_eog(vocab, token))
            reason = request.take(token, b"" if end else token_piece(vocab, token), end)
            if reason is not None:
                request.finish_reason = reason
                break
            model.eval([token])
    finally:
        sampler.close()
    return _result(request, prefix)


@op(
    "llm.generate",
    kind="model",
    classes=MODEL_CLASSES,
    runtime=LLAMA_CPP,
    outputs=("text", "tokens", "prompt_tokens", "cached_tokens", "finish_reason", "loads"),
    units=lambda a: float(a.get("max_tokens", 64)),
    unit="token",
    # `split: {prefill: CLASS, decode: CLASS}` on a node runs it as these two steps
    split=("llm.prefill", "llm.decode", "state"),
    prefix_cache=True,  # the batch keeps each slot's tokens: a run's next round reuses them
    on_endpoint=True,  # an endpoint class completes it remotely (workers/ops/endpoint.py)
    samples=[
        {"prompt": SAMPLE_PROMPT, "max_tokens": 4, "stop": []},
        {"prompt": SAMPLE_PROMPT, "max_tokens": 24, "stop": []},
    ],
)
def generate(
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    seed: int = 0,
    model: str = DEFAULT_LLM,
    n_ctx: int = 2048,
    prefix: str = "",
    grammar: str | None = None,
    choices: list[str] | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """Complete ``prompt`` (the returned text is stripped, and starts with ``prefix``).

    Temperature 0 is greedy; ``seed`` fixes sampling otherwise. ``grammar`` (GBNF) or
    ``choices`` (the text must be exactly one of them) constrain the decode, e.g.
    ``choices: [yes, no]`` for a decision, a JSON grammar for tool arguments.
    ``cached_tokens``: the prompt tokens whose KV an earlier step left in the batch.
    ``stream``: while somebody follows the run, the text is passed on as it is written
    (``RunHandle.events``); the outputs are the same either way.

    On an endpoint class the endpoint completes the prompt (no model is loaded here);
    ``grammar`` and ``choices`` are not sent there: such a node runs on a local class.
    """
    remote = this_workers_endpoint()
    if remote is not None:
        if grammar is not None or choices is not None:
            raise ValueError(
                "grammar and choices constrain a local decode and are not sent to an "
                "endpoint: pin this node to a local class (classes: [gpu, cpu])"
            )
        return complete(remote, prompt, max_tokens, temperature, stop, seed, prefix)
    with llm_lease(model, check_ctx(n_ctx), batch=True) as entry:
        assert entry.batch is not None
        request = _request(
            entry.engine, prompt, max_tokens, temperature, stop, seed, grammar, choices
        )
        entry.batch.submit(request)
        left = time_left(float("inf"))
        limit = None if left == float("inf") else left
        if stream and streaming():
            wait_streaming(entry.batch, request, limit, prefix)
        else:
            entry.batch.wait(request, limit)
    return {
        **_result(request, prefix),
        "cached_tokens": request.reused,
        "loads": LOADS[f"llm:{model}"],
    }


@op(
    "llm.prefill",
    kind="model",
    classes=MODEL_CLASSES,
    runtime=LLAMA_CPP,
    outputs=("state", "prompt_tokens", "state_bytes", "seconds"),
    units=lambda a: len(str(a.get("prompt", ""))) / 4.0,  # ~4 characters a token
    unit="token",
    samples=[{"prompt": SAMPLE_PROMPT}, {"prompt": SAMPLE_TEXT * 6 + SAMPLE_PROMPT}],
)
def prefill(prompt: str, model: str = DEFAULT_LLM, n_ctx: int = 2048) -> dict[str, Any]:
    """Evaluate the prompt and hand llama.cpp's state over by reference (for llm.decode)."""
    import numpy as np

    start = time.perf_counter()
    with llm_lease(model, check_ctx(n_ctx)) as entry, device_lock():
        engine = entry.engine
        tokens = _tokens(engine, prompt, 1)
        engine.reset()
        # All but the last token, as the batch prefills a prompt: llm.decode evaluates the
        # last one, whose logits start the answer (the same shapes of batch as unsplit).
        engine.eval(tokens[:-1])
        state = engine.save_state()
    header = {
        "format": STATE_FORMAT,
        "model": model,
        "n_ctx": n_ctx,
        "n_tokens": state.n_tokens,
        "seed": state.seed,
        "input_ids": np.asarray(state.input_ids[: state.n_tokens], dtype=np.intc).tolist(),
        "prompt": prompt,
    }
    # No logits are saved (decode evaluates the last prompt token): the KV cache and the
    # tokens only, so the handover is kilobytes per token, not megabytes.
    payload = json.dumps(header).encode() + b"\n" + zlib.compress(state.llama_state, 1)
    return {
        "state": blobs().put(payload, "llama-state"),
        "prompt_tokens": len(tokens),
        "state_bytes": len(payload),
        "seconds": round(time.perf_counter() - start, 4),
    }


def _restore(engine: Any, payload: bytes, model: str) -> str:
    import numpy as np
    from llama_cpp.llama import LlamaState

    raw_header, _, body = payload.partition(b"\n")
    header = json.loads(raw_header)
    if header.get("format") != STATE_FORMAT or header.get("model") != model:
        raise ValueError(f"state was saved by model {header.get('model')!r}, not {model!r}")
    # A state holds at most its context's KV cache: a blob that inflates past it is refused
    # as it inflates (a small blob of zeros could otherwise grow to gigabytes)
    most = int(kv_cache_mb(engine._model.model, engine.n_ctx()) * 2**20 * 1.5) + 2**24
    inflate = zlib.decompressobj()
    data = inflate.decompress(body, most)
    if inflate.unconsumed_tail:
        raise ValueError(f"state inflates past {most} bytes, more than a context of its n_ctx")
    ids = np.zeros(engine.n_ctx(), dtype=np.intc)
    ids[: header["n_tokens"]] = header["input_ids"]
    engine.load_state(
        LlamaState(
            input_ids=ids,
            scores=np.zeros((1, engine.n_vocab()), dtype=np.single),
            n_tokens=header["n_tokens"],
            llama_state=data,
            llama_state_size=len(data),
            seed=header["seed"],
        )
    )
    return str(header["prompt"])


@op(
    "llm.decode",
    kind="model",
    classes=MODEL_CLASSES,
    runtime=LLAMA_CPP,
    outputs=("text", "tokens", "prompt_tokens", "finish_reason", "loads", "handover_s"),
    units=lambda a: float(a.get("max_tokens", 64)),
    unit="token",
)
def decode(
    state: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    seed: int = 0,
    model: str = DEFAULT_LLM,
    n_ctx: int = 2048,
    prefix: str = "",
    grammar: str | None = None,
    choices: list[str] | None = None,
) -> dict[str, Any]:
    """Restore a prefilled state (from llm.prefill) and generate the completion (``grammar``
    and ``choices`` as for llm.generate). ``handover_s``: fetching and restoring the state."""
    n_ctx = check_ctx(n_ctx)
    start = time.perf_counter()
    payload = blobs().get(state)
    with llm_lease(model, n_ctx) as entry, device_lock():
        engine = entry.engine
        prompt = _restore(engine, payload, model)
        handover = time.perf_counter() - start
        result = _complete(
            engine, prompt, max_tokens, temperature, stop, seed, prefix, grammar, choices
        )
    return {**result, "loads": LOADS[f"llm:{model}"], "handover_s": round(handover, 4)}


@op("llm.choose", classes=("cpu", "io", "npu-lite", "gpu"), outputs=("choice", "matched"))
def choose(text: str, options: list[str], default: str | None = None) -> dict[str, Any]:
    """The first of ``options`` that the generated text starts with or mentions as a word."""
    if not options:
        raise ValueError("options must not be empty")
    words = re.findall(r"[a-z0-9_-]+", (text or "").lower())
    for word in words[:1] + words:
        for opt in options:
            if word == opt.lower():
                return {"choice": opt, "matched": True}
    fallback = default if default is not None else options[-1]
    return {"choice": fallback, "matched": False}
