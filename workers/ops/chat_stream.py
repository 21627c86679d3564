"""A chat completion streamed by its server (``"stream": true``: server-sent events), read as
it comes: each piece of text goes to whoever follows the run (:func:`fleet.sdk.stream_text`)
the moment it arrives, and the pieces are put back together into the one completion
``llm.chat`` returns, as if it had not been streamed."""

from __future__ import annotations

import json
from typing import Any

import httpx

from fleet.sdk import stream_text
from workers.ops.tools import ToolError

EVENT_STREAM = "text/event-stream"


def is_stream(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith(EVENT_STREAM)


def collect(response: httpx.Response, cap: int, what: str) -> bytes:
    """The completion a streamed answer makes (JSON, as a non-streamed one), each text piece
    published as it arrives; fails as soon as more than ``cap`` bytes came."""
    text: list[str] = []
    finish: Any = None
    usage: dict[str, Any] = {}
    size = 0
    for line in response.iter_lines():
        size += len(line) + 1
        if size > cap:
            raise ToolError(f"{what}: streamed response over {cap} bytes")
        if not line.startswith("data:"):
            continue  # comments, event names, keep-alives
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ToolError(f"{what}: not a server-sent event of JSON: {data[:80]!r}") from None
        if isinstance(chunk, dict) and chunk.get("error"):
            return json.dumps(chunk).encode()  # the server's own words, as _outputs reads them
        usage = (chunk.get("usage") if isinstance(chunk, dict) else None) or usage
        for choice in (chunk.get("choices") if isinstance(chunk, dict) else None) or []:
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str) and piece:
                text.append(piece)
                stream_text(piece)
            finish = choice.get("finish_reason") or finish
    message = {"role": "assistant", "content": "".join(text)}
    whole = {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}
    return json.dumps(whole).encode()
