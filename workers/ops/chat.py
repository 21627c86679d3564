"""``llm.chat``: an LLM behind an OpenAI-compatible HTTP endpoint (llama.cpp's server,
llama-cpp-python's, vLLM, a hosted API), as a tool step.

The model runs elsewhere: the step only waits on the network, so it is a tool of the io class
(many threads, no device) rather than a model op of a device class. It goes the way
``http.request`` goes: the URL must pass the allowlist (``http_allow``; the fleet's own
services are refused whatever it says), the call is made on the process's shared client with
a deadline on the whole attempt (a server that drips tokens cannot hold it), and 429, 5xx and
transport failures are retried with backoff -- the server's ``Retry-After`` honoured -- while
no wait or attempt runs past the step's deadline.

The API key is never in the workflow: ``api_key`` is the NAME of a secret, and the worker
reads the key from its own environment, ``FLEET_SECRET_<NAME>``. So the key is in no
message on the broker, no run record, no trace and no output; errors name the secret and its
variable, never the value.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from fleet.sdk import note_spend, op, settings, streaming, time_left
from workers.ops import httpclient
from workers.ops.chat_stream import collect, is_stream
from workers.ops.httpclient import DeadlineExceeded
from workers.ops.tools import (
    RETRY_STATUS,
    Target,
    ToolError,
    _attempt_limit,
    _with_idempotency_key,
    check_url,
    read_capped,
)

MAX_REQUEST = 4 << 20  # 4 MiB of JSON: a long conversation with its tools, not a dump
MAX_RESPONSE = 4 << 20
MAX_TOKENS = 8192
MAX_TIMEOUT_S = 600.0  # a long generation on a slow server; the step's deadline still rules
MAX_RETRIES = 10
MAX_WAIT_S = 60.0  # a Retry-After of an hour is not waited for in a step
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
SECRET_PREFIX = "FLEET_SECRET_"
# A secret's name: short, and no key (an "sk-..." key given by mistake is never printed back).
_SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
_ERROR_SNIPPET = 300
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: a header-safe token


def secret_variable(name: str) -> str:
    """The environment variable that holds secret ``name``: ``FLEET_SECRET_<NAME>``."""
    if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name) or _looks_like_key(name):
        # The value is not echoed: it may be the key itself, passed where its name belongs.
        raise ValueError(
            "api_key must be the NAME of a secret (letters, digits, '_' or '-', at most 40 "
            "characters, e.g. OPENAI), whose key the worker reads from FLEET_SECRET_<NAME>; "
            "the value given is not one (and is not printed)"
        )
    return SECRET_PREFIX + name.upper().replace("-", "_")


def _looks_like_key(name: str) -> bool:
    return name.lower().startswith(("sk-", "sk_", "hf_", "gsk_", "xai-"))


def read_secret(name: str) -> str:
    """The key secret ``name`` holds in this worker's environment; a missing or empty
    variable is an error that names the variable (set it where the worker runs)."""
    variable = secret_variable(name)
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ToolError(
            f"secret {name!r} is not set on this worker: set the environment variable "
            f"{variable} where the worker runs"
        )
    if not _KEY_CHARS.fullmatch(value):
        # A key that is no header value would make the HTTP library's error quote the
        # whole header -- the key -- into the step's error and the worker's log.
        raise ToolError(
            f"secret {name!r} ({variable}) holds characters an API key cannot have "
            "(only printable ASCII without spaces): check the variable's value"
        )
    return value


def redact(text: str, key: str | None) -> str:
    """``text`` with every copy of ``key`` blanked: before any cut, so no part of it stays."""
    return text.replace(key, "***") if key else text


def _check_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise ValueError(
            f"messages[{index}] must be a mapping with a role in {sorted(ROLES)}, "
            f"got {str(message)[:80]!r}"
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise ValueError(f"messages[{index}].content must be text or a list of parts")
    if content is None and not message.get("tool_calls"):
        raise ValueError(f"messages[{index}] has no content")
    return dict(message)


def _messages(prompt: str | None, messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The conversation: ``prompt`` is a single user message, ``messages`` the whole of it."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt or messages")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt is empty")
        return [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    return [_check_message(i, m) for i, m in enumerate(messages)]


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None or stop == [] or stop == "":
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError("stop must be a string or a list of non-empty strings")
    return stops


def _tool_choice(tool_choice: str | None, tools: list[dict[str, Any]] | None) -> Any:
    """``auto``, ``none`` or ``required`` as they are; any other text names the one tool
    the model must call (a server such as llama-cpp-python's then constrains its output to
    that tool's parameters)."""
    if tool_choice is None or tool_choice in TOOL_CHOICES:
        return tool_choice
    names = {t["function"]["name"] for t in tools or []}
    if tool_choice not in names:
        raise ValueError(f"tool_choice {tool_choice!r} is not one of the tools {sorted(names)}")
    return {"type": "function", "function": {"name": tool_choice}}


def _check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    for i, tool in enumerate(tools if isinstance(tools, list) else [None]):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise ValueError(
                f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}"
            )
    return tools


def _check_numbers(
    max_tokens: int, temperature: float, timeout: float, retries: int, backoff: float
) -> None:
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise ValueError(f"max_tokens must be within 1..{MAX_TOKENS}, got {max_tokens}")
    if not 0 <= temperature <= 2:
        raise ValueError(f"temperature must be within 0..2, got {temperature}")
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be within (0, {MAX_TIMEOUT_S:g}] seconds, got {timeout}")
    if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be within 0..{MAX_RETRIES}, got {retries}")
    if not 0 <= backoff <= MAX_WAIT_S:
        raise ValueError(f"backoff must be within 0..{MAX_WAIT_S:g} seconds, got {backoff}")


def _endpoint(base_url: str) -> str:
    """``{base_url}/chat/completions``; a base URL is a plain prefix (no query)."""
    if not isinstance(base_url, str) or "?" in base_url or "#" in base_url:
        raise ValueError(f"base_url must be a URL without query or fragment, got {base_url!r}")
    return base_url.rstrip("/") + "/chat/completions"


def _payload(
    model: str,
    conversation: list[dict[str, Any]],
    max_tokens: int,
    temperature: float,
    stop: list[str] | None,
    json_schema: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    stream: bool = False,
) -> bytes:
    """The request body, within MAX_REQUEST. A JSON schema goes in the form llama.cpp's
    servers take (``response_format: {type: json_object, schema}``): they turn it into a
    grammar, so the answer is JSON of that shape."""
    body: dict[str, Any] = {
        "model": model,
        "messages": conversation,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if stream:  # the token counts come in the last event (servers that know the option)
        body["stream_options"] = {"include_usage": True}
    optional = {"stop": stop, "tools": tools, "tool_choice": tool_choice}
    body.update({k: v for k, v in optional.items() if v is not None})
    if json_schema is not None:
        if not isinstance(json_schema, dict):
            raise ValueError("json_schema must be a JSON schema (a mapping)")
        body["response_format"] = {"type": "json_object", "schema": json_schema}
    data = json.dumps(body, ensure_ascii=False).encode()
    if len(data) > MAX_REQUEST:
        raise ValueError(f"the request is {len(data)} bytes of JSON (limit {MAX_REQUEST})")
    return data


def _units(args: dict[str, Any]) -> float:
    """Tokens the call costs the server, for the router: the prompt's (about 4 characters
    a token) and the most it may generate."""
    if args.get("messages") is not None:
        chars = sum(len(str(m.get("content") or "")) for m in args["messages"])
    else:
        chars = len(str(args.get("prompt") or ""))
    return chars / 4.0 + float(args.get("max_tokens", 256))


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: float | None  # seconds, from a Retry-After header in seconds form
    location: str | None


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds; the HTTP-date form (rare from APIs) is left to backoff."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _post(target: Target, url: str, data: bytes, headers: dict[str, str], limit: float) -> Answer:
    """One attempt on the process's shared client, all of it within ``limit`` seconds (see
    :mod:`workers.ops.httpclient`), the answer streamed and capped at MAX_RESPONSE bytes.
    A redirect is not followed: the key would go with the POST to wherever it points."""
    end = time.monotonic() + limit
    origin = (target.scheme, target.host, target.port)
    with (
        httpclient.deadline(limit),
        httpclient.shared().client(
            origin, settings().http_per_host, end - time.monotonic()
        ) as client,
        client.stream("POST", url, content=data, headers=headers, timeout=limit) as response,
    ):
        if response.is_redirect:
            body = b""
        elif is_stream(response):  # asked for while somebody follows the run
            body = collect(response, MAX_RESPONSE, f"POST {url}")
        else:
            body = read_capped(response, MAX_RESPONSE, f"POST {url}")
        return Answer(
            response.status_code,
            body,
            _retry_after(response.headers.get("retry-after")),
            response.headers.get("location"),
        )


def _detail(body: bytes, key: str | None) -> str:
    """The server's own words on a refused request (OpenAI's ``error.message``, FastAPI's
    ``detail``), short, with the key blanked should the server have echoed it."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = data.get("error", data.get("detail", data))
        found = found.get("message", found) if isinstance(found, dict) else found
        text = found if isinstance(found, str) else json.dumps(found)
    else:
        text = body.decode(errors="replace")
    text = " ".join(redact(text, key).split())[:_ERROR_SNIPPET]
    return text or "(no reason given)"


def _refused(answer: Answer, url: str, api_key: str | None, key: str | None) -> ToolError:
    """The error for an answer a retry will not change (a 4xx other than 429, a redirect)."""
    status = answer.status
    if status in (401, 403):
        secret = (
            f"the API key of secret {api_key!r} ({secret_variable(api_key)}) was refused"
            if api_key
            else "no API key was sent (api_key names the secret that holds one)"
        )
        return ToolError(f"POST {url} answered {status}: {secret}")
    if answer.location is not None:
        return ToolError(
            f"POST {url} answered {status}, a redirect to {answer.location!r}: not followed "
            "(give the final base_url)"
        )
    return ToolError(f"POST {url} answered {status}: {_detail(answer.body, key)}")


def _outputs(answer: Answer, url: str, key: str | None = None) -> dict[str, Any]:
    """The op's outputs from an OpenAI chat completion: the first choice's text, its tool
    calls as the server gave them (each ``{id, type, function: {name, arguments}}``, the
    arguments JSON text: json.parse reads them; they go back as an assistant message as
    they are), why it stopped, and the token counts."""
    try:
        data = json.loads(answer.body)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        calls = list(message.get("tool_calls") or [])
        usage = data.get("usage") or {}
        counts = {k: max(0, int(usage.get(k) or 0)) for k in ("prompt_tokens", "completion_tokens")}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        snippet = redact(answer.body.decode(errors="replace"), key)[:120]
        raise ToolError(f"POST {url}: not a chat completion: {snippet!r}") from None
    return {
        "text": content if isinstance(content, str) else "",
        "usage": counts,
        "tool_calls": calls,
        "finish_reason": choice.get("finish_reason"),
    }


def _wait(attempt: int, backoff: float, answer: Answer | None) -> None:
    """Exponential backoff, or longer when the server says so (``Retry-After``), capped at
    MAX_WAIT_S and at what is left of the step's deadline (the next attempt then sees none
    left and gives up, rather than the step sleeping past its end)."""
    delay = backoff * 2 ** (attempt - 1)
    if answer is not None and answer.retry_after is not None:
        delay = max(delay, answer.retry_after)
    time.sleep(max(0.0, time_left(min(delay, MAX_WAIT_S))))


def _attempts(
    target: Target,
    url: str,
    data: bytes,
    headers: dict[str, str],
    timeout: float,
    retries: int,
    backoff: float,
    key: str | None,
) -> tuple[Answer | None, str]:
    """Attempts until one gives an answer a retry would not change (the answer, ""), or
    they run out (None, what went wrong last)."""
    last = ""
    for attempt in range(1, retries + 2):
        try:
            limit = _attempt_limit(timeout)  # no attempt starts, or runs on, past the step
        except DeadlineExceeded:
            tried = f" after {attempt - 1} attempt(s) at POST {url} ({last})" if last else ""
            raise DeadlineExceeded(f"the step's deadline has passed{tried}") from None
        answer = None
        try:
            answer = _post(target, url, data, headers, limit)
        except DeadlineExceeded as exc:  # a slow generation, a drip, no slot for the host
            last = f"DeadlineExceeded: {exc} ({limit:g} s)"
        except httpx.TransportError as exc:  # refused, reset, timed out
            last = f"{type(exc).__name__}: {exc or 'no answer'}"
        else:
            if answer.status not in RETRY_STATUS:
                return answer, ""
            last = f"status {answer.status}: {_detail(answer.body, key)}"
        if attempt <= retries:
            _wait(attempt, backoff, answer)
    return None, last


def post(
    target: Target,
    url: str,
    data: bytes,
    api_key: str | None,
    timeout: float,
    retries: int,
    backoff: float,
) -> tuple[Answer, str | None]:
    """POST ``data`` (JSON) to an endpoint already checked against the allowlist, with the
    key of secret ``api_key`` and the step's idempotency key, retrying as the module says:
    the answer, and the key (for redacting what is quoted of the answer). Raises when the
    attempts run out or the endpoint refuses."""
    key = read_secret(api_key) if api_key is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    headers = _with_idempotency_key("POST", headers)
    answer, last = _attempts(target, url, data, headers, timeout, retries, backoff, key)
    if answer is None:
        raise ToolError(f"POST {url} failed after {retries + 1} attempt(s): {last}")
    if answer.status >= 300:
        raise _refused(answer, url, api_key, key)
    return answer, key


@op(
    "llm.chat",
    kind="tool",
    classes=("io", "cpu"),
    outputs=("text", "usage", "tool_calls", "finish_reason"),
    units=_units,
    unit="token",
    keeps_deadline=True,  # every attempt and wait is cut to the step's time left
    # no samples: `fleet profile` has no server to call; the server's own speed is the
    # step's, which the catalogue states per endpoint rather than per class
)
def chat(
    base_url: str,
    model: str,
    prompt: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    stop: str | list[str] | None = None,
    json_schema: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    backoff: float = 0.5,
    api_key: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """Ask an LLM behind an OpenAI-compatible endpoint (``POST {base_url}/chat/completions``).

    ``prompt`` (one user message) or ``messages`` (``[{role, content}]``), not both.
    ``json_schema`` constrains the answer to JSON of that schema (llama.cpp's
    ``response_format`` form); ``tools`` is an OpenAI tools list, and ``tool_choice``
    ``auto``/``none``/``required`` or one tool's name. ``api_key`` is the NAME of a secret:
    the worker reads the key from ``FLEET_SECRET_<NAME>`` and sends it as a bearer token.

    ``timeout`` is the whole deadline of one attempt (connect, generation, body). Timeouts,
    transport errors, 429 and 5xx are retried (``retries`` more times, backoff doubling from
    ``backoff`` s, longer when the server's Retry-After says so, never past the step's
    deadline); any other 4xx fails the step with the status and the server's reason.

    ``stream``: while somebody follows the run (``RunHandle.events``, ``fleet submit
    --follow``), the server streams the answer and each piece of text is passed on as it
    comes (not with ``tools``); the outputs are the same either way.
    """
    url = _endpoint(base_url)
    target = check_url(url, "POST")
    _check_numbers(max_tokens, temperature, timeout, retries, backoff)
    checked_tools = _check_tools(tools)
    data = _payload(
        model,
        _messages(prompt, messages),
        max_tokens,
        temperature,
        _stops(stop),
        json_schema,
        checked_tools,
        _tool_choice(tool_choice, checked_tools),
        stream=bool(stream) and not checked_tools and streaming(),
    )
    answer, key = post(target, url, data, api_key, timeout, retries, backoff)
    outputs = _outputs(answer, url, key)
    _charge(base_url, outputs["usage"])
    return outputs


def _charge(base_url: str, usage: dict[str, int]) -> None:
    """The step's tokens, and their dollars at the endpoint's configured prices (``endpoints``
    in the fleet config; an endpoint not configured costs nothing but its tokens are kept)."""
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    found = settings().endpoint_for(base_url)
    dollars = found[1].dollars(prompt, completion) if found is not None else 0.0
    note_spend(dollars, prompt + completion)
