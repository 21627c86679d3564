"""``llm.generate`` on an endpoint class: the same prompt completed by an LLM endpoint.

A class with ``endpoint = "NAME"`` (fleet config) is a remote model the router may choose for
an ``llm.generate`` step, beside the local llama.cpp classes: its workers load no model and
send the step's raw prompt to ``{base_url}/completions`` of ``endpoints.NAME`` -- the
OpenAI-compatible raw completion, which is what llm.generate computes locally (same prompt,
no chat template). The call goes the way llm.chat's does (the allowlist, the process's
shared clients, a whole-attempt deadline, retries honouring Retry-After, the key read from
the worker's environment by its secret's name), and the step is charged its tokens at the
endpoint's prices.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fleet.sdk import note_spend, settings, worker_class
from workers.ops.chat import post, redact
from workers.ops.tools import ToolError, check_url

if TYPE_CHECKING:
    from fleet.sdk import EndpointSpec

RETRIES = 2
BACKOFF_S = 0.5


def this_workers_endpoint() -> EndpointSpec | None:
    """The endpoint of the class this worker process serves, if it is an endpoint class."""
    cls = worker_class()
    cfg = settings()
    spec = cfg.classes.get(cls) if cls else None
    if spec is None or spec.endpoint is None:
        return None
    return cfg.endpoints[spec.endpoint]


def complete(
    endpoint: EndpointSpec,
    prompt: str,
    max_tokens: int,
    temperature: float,
    stop: list[str] | None,
    seed: int,
    prefix: str,
) -> dict[str, Any]:
    """llm.generate's outputs, from ``endpoint``'s raw completion of ``prompt``."""
    url = endpoint.base_url.rstrip("/") + "/completions"
    target = check_url(url, "POST")
    body: dict[str, Any] = {
        "model": endpoint.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        **({"stop": stop} if stop else {}),
        **endpoint.extra,
    }
    data = json.dumps(body).encode()
    answer, key = post(
        target, url, data, endpoint.api_key or None, endpoint.timeout_s, RETRIES, BACKOFF_S
    )
    try:
        reply = json.loads(answer.body)
        choice = reply["choices"][0]
        text = str(choice.get("text") or "")
        usage = reply.get("usage") or {}
        prompt_tokens = max(0, int(usage.get("prompt_tokens") or 0))  # a server's negative
        tokens = max(0, int(usage.get("completion_tokens") or 0))  # counts lower no cost
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        snippet = redact(answer.body.decode(errors="replace"), key)[:120]
        raise ToolError(f"POST {url}: not a completion: {snippet!r}") from None
    note_spend(endpoint.dollars(prompt_tokens, tokens), prompt_tokens + tokens)
    return {
        "text": f"{prefix}{text}".strip(),
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": 0,
        "finish_reason": choice.get("finish_reason"),
        "loads": 0,
    }
