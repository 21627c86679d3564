"""llm.chat against a stand-in OpenAI-compatible server on 127.0.0.1: the error paths a real
server gives only now and then (429 with Retry-After, 5xx, a refused key), the request it
sends and the outputs it reads. tests/integration/test_llm_chat.py runs it against
llama-cpp-python's own server and a real model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleet.sdk.process import settings
from fleet.sdk.registry import registry
from fleet.sdk.step import StepContext, running
from workers.ops.chat import chat, secret_variable
from workers.ops.httpclient import DeadlineExceeded
from workers.ops.tools import ToolError

KEY = "s3cr3t-key-value-42"
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "order_status", "arguments": '{"order_id": 1042}'},
}


def _completion(text: str | None, tool_calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


class _Handler(BaseHTTPRequestHandler):
    """The first path segment picks the behaviour: /SCENARIO/v1/chat/completions."""

    hits: dict[str, int] = {}
    seen: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}  # scenario -> (body, headers)

    def do_POST(self) -> None:
        scenario = self.path.split("/")[1]
        n = self.hits[scenario] = self.hits.get(scenario, 0) + 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen[scenario] = (body, dict(self.headers))
        if scenario == "ratelimited" and n == 1:
            self._reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        elif scenario == "stalled":  # always busy, and asks for a long wait
            self._reply(429, {"error": {"message": "busy"}}, {"Retry-After": "30"})
        elif scenario == "flaky" and n <= 2:
            self._reply(500, {"error": {"message": "overloaded"}})
        elif scenario == "bad":
            self._reply(400, {"error": {"message": "max_tokens is too large for this model"}})
        elif self._echoes(scenario):
            pass
        elif scenario == "refused":
            self._reply(401, {"error": {"message": f"Incorrect API key {KEY[:6]}..."}})
        elif scenario == "moved":
            self._reply(307, {}, {"Location": "http://example.com/v1/chat/completions"})
        elif scenario == "hang":
            time.sleep(1.0)
            self._reply(200, _completion("late"))
        elif scenario == "tools":
            self._reply(200, _completion(None, [TOOL_CALL]))
        elif scenario == "junk":
            self._reply(200, {"not": "a completion"})

        else:
            self._reply(200, _completion(f"answer #{n}"))

    def _echoes(self, scenario: str) -> bool:
        """Careless servers that quote the request's key back: in a 400 (where a
        300-character cut of it falls, for longecho), or in a 200 that is no completion."""
        auth = self.headers.get("Authorization", "")
        if scenario == "echo":
            self._reply(400, {"error": {"message": f"bad request with {auth}"}})
        elif scenario == "longecho":
            self._reply(400, {"error": {"message": "x" * 280 + f" {auth}"}})
        elif scenario == "proxypage":
            self._reply(200, {"page": f"proxy saw {auth}"})
        else:
            return False
        return True

    def _reply(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _url(server: str, scenario: str) -> str:
    return f"{server}/{scenario}/v1"


def test_a_chat_completion_gives_text_usage_and_finish_reason(server: str) -> None:
    out = chat(_url(server, "ok"), "gemma", prompt="Where is my order?", max_tokens=16)
    assert out == {
        "text": "answer #1",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "tool_calls": [],
        "finish_reason": "stop",
    }
    body, headers = _Handler.seen["ok"]
    assert body["messages"] == [{"role": "user", "content": "Where is my order?"}]
    assert body["model"] == "gemma" and body["max_tokens"] == 16 and body["temperature"] == 0
    assert "Authorization" not in headers and "Idempotency-Key" not in headers  # no key, step


def test_the_request_carries_schema_stop_tools_and_the_key(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SECRET_LOCAL_LLM", KEY)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    tools = [{"type": "function", "function": {"name": "order_status", "parameters": schema}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with running(StepContext("run7", "ask", attempt=0)):
        out = chat(
            _url(server, "tools"),
            "m",
            messages=messages,
            stop="\n\n",
            json_schema=schema,
            tools=tools,
            tool_choice="order_status",
            api_key="local-llm",
        )
    assert out["tool_calls"] == [TOOL_CALL] and out["text"] == ""
    assert out["finish_reason"] == "tool_calls"
    assert json.loads(out["tool_calls"][0]["function"]["arguments"]) == {"order_id": 1042}
    body, headers = _Handler.seen["tools"]
    assert body["messages"] == messages and body["stop"] == ["\n\n"]
    assert body["response_format"] == {"type": "json_object", "schema": schema}
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "order_status"}}
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Idempotency-Key"] == "run7:ask"  # the same for the step's retries


def test_429_is_retried_after_the_servers_retry_after(server: str) -> None:
    start = time.monotonic()
    out = chat(_url(server, "ratelimited"), "m", prompt="hi", backoff=0.01)
    assert out["text"] == "answer #2"  # the second attempt's
    assert time.monotonic() - start >= 1.0  # Retry-After: 1, not the 10-ms backoff


def test_a_retry_after_past_the_steps_deadline_is_not_waited_for(server: str) -> None:
    """The server asks for 30 s; the step has 0.5 s left: the wait is cut to it, and no
    further attempt starts once it is over."""
    before = _Handler.hits.get("stalled", 0)
    step = StepContext("r", "ask", 0, deadline=time.time() + 0.5)
    start = time.monotonic()
    with running(step), pytest.raises(DeadlineExceeded, match=r"deadline has passed.*429"):
        chat(_url(server, "stalled"), "m", prompt="hi", retries=5, backoff=0.01)
    assert time.monotonic() - start < 2.0
    assert _Handler.hits["stalled"] == before + 1


def test_5xx_is_retried_with_backoff(server: str) -> None:
    out = chat(_url(server, "flaky"), "m", prompt="hi", retries=2, backoff=0.01)
    assert out["text"] == "answer #3"
    with pytest.raises(ToolError, match=r"failed after 1 attempt\(s\): status 429: busy"):
        chat(_url(server, "stalled"), "m", prompt="hi", retries=0)


def test_a_timeout_is_retried_then_fails(server: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"failed after 2 attempt\(s\): (DeadlineExceeded|Read)"):
        chat(_url(server, "hang"), "m", prompt="hi", timeout=0.2, retries=1, backoff=0.01)
    assert time.monotonic() - start < 1.5


def test_a_4xx_names_the_status_the_endpoint_and_the_servers_reason(server: str) -> None:
    url = _url(server, "bad")
    before = _Handler.hits.get("bad", 0)
    with pytest.raises(ToolError) as err:
        chat(url, "m", prompt="hi")
    assert str(err.value) == (
        f"POST {url}/chat/completions answered 400: max_tokens is too large for this model"
    )
    assert _Handler.hits["bad"] == before + 1  # not retried


def test_a_refused_key_names_the_secret_never_the_key(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SECRET_X", KEY)
    with pytest.raises(ToolError) as err:
        chat(_url(server, "refused"), "m", prompt="hi", api_key="x")
    text = str(err.value)
    assert "answered 401" in text and "secret 'x' (FLEET_SECRET_X) was refused" in text
    assert KEY not in text and KEY[:6] not in text  # not even the server's quote of it
    with pytest.raises(ToolError, match="401: no API key was sent"):
        chat(_url(server, "refused"), "m", prompt="hi")
    with pytest.raises(ToolError) as echoed:  # a server that quotes the key back in a 400
        chat(_url(server, "echo"), "m", prompt="hi", api_key="x")
    assert KEY not in str(echoed.value) and "Bearer ***" in str(echoed.value)


@pytest.mark.parametrize("scenario", ["longecho", "proxypage"])
def test_no_part_of_an_echoed_key_reaches_the_error(
    server: str, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    """The key is blanked before an error's text is cut, and in every snippet of a body."""
    monkeypatch.setenv("FLEET_SECRET_X", KEY)
    with pytest.raises(ToolError) as err:
        chat(_url(server, scenario), "m", prompt="hi", api_key="x")
    text = str(err.value)
    assert not any(KEY[i : i + 5] in text for i in range(len(KEY) - 4)), text


@pytest.mark.parametrize("bad", ["sk-line\nbreak", "sk-caf\u00e9", "sk with space"])
def test_a_key_that_is_no_header_value_is_refused_without_printing_it(
    server: str, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """The HTTP library's error for such a header quotes the header -- the key -- whole."""
    monkeypatch.setenv("FLEET_SECRET_X", bad)
    with pytest.raises(ToolError) as err:
        chat(_url(server, "ok"), "m", prompt="hi", api_key="x")
    text = f"{err.value!s} {err.value!r}"
    assert "FLEET_SECRET_X" in text and "characters an API key cannot have" in text
    assert bad.strip() not in text and bad.strip()[:6] not in text


def test_a_missing_secret_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_SECRET_OPENAI_PROD", raising=False)
    with pytest.raises(ToolError, match="set the environment variable FLEET_SECRET_OPENAI_PROD"):
        chat("http://127.0.0.1:9/v1", "m", prompt="hi", api_key="openai-prod")


def test_a_key_given_where_its_name_belongs_is_not_printed() -> None:
    key = "sk-proj-Abc123Def456Ghi789"
    with pytest.raises(ValueError, match="NAME of a secret") as err:
        chat("http://127.0.0.1:9/v1", "m", prompt="hi", api_key=key)
    assert key not in str(err.value)
    assert secret_variable("openai-prod") == "FLEET_SECRET_OPENAI_PROD"


def test_only_allowlisted_endpoints_are_called() -> None:
    with pytest.raises(PermissionError, match=r"example\.com:80/v1/chat/completions is not in"):
        chat("http://example.com/v1", "m", prompt="hi")
    broker = settings().broker_url.replace("redis://", "http://").rsplit("/", 1)[0]
    with pytest.raises(PermissionError, match="points at the broker"):
        chat(broker, "m", prompt="hi")


def test_a_redirect_is_not_followed(server: str) -> None:
    with pytest.raises(ToolError, match=r"answered 307, a redirect to .*not followed"):
        chat(_url(server, "moved"), "m", prompt="hi")


def test_an_answer_that_is_no_chat_completion_fails_clearly(server: str) -> None:
    with pytest.raises(ToolError, match="not a chat completion"):
        chat(_url(server, "junk"), "m", prompt="hi")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "exactly one"),
        ({}, "exactly one"),
        ({"prompt": "  "}, "prompt is empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, r"messages\[0\]"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 100_000}, "max_tokens"),
        ({"prompt": "hi", "temperature": 3}, "temperature"),
        ({"prompt": "hi", "stop": ["", "x"]}, "stop"),
        ({"prompt": "hi", "tools": [{"type": "function"}]}, r"tools\[0\]"),
        ({"prompt": "hi", "tool_choice": "nope"}, "tool_choice"),
        ({"prompt": "x" * (5 << 20)}, "limit"),
    ],
)
def test_bad_arguments_are_refused_before_any_call(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chat("http://127.0.0.1:9/v1", "m", **args)


def test_units_are_the_prompts_tokens_and_max_tokens() -> None:
    spec = registry.get("llm.chat")
    assert spec.kind == "tool" and spec.classes == ("io", "cpu") and spec.unit == "token"
    assert spec.units_of({"prompt": "x" * 400, "max_tokens": 100}) == 200.0
    messages = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 40}]
    assert spec.units_of({"messages": messages, "max_tokens": 10}) == 30.0


def test_a_step_is_charged_its_endpoints_tokens(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the prices the fleet config gives the endpoint ($ per million tokens, in and out),
    the step notes its tokens and dollars (the worker puts them in its trace and run cost);
    an endpoint not configured is charged nothing but its tokens."""
    from fleet.config import EndpointSpec
    from workers.ops import chat as chat_module

    priced = EndpointSpec(base_url=_url(server, "ok") + "/", price_in=2.0, price_out=10.0)
    cfg = settings().model_copy(update={"endpoints": {"local": priced}})
    monkeypatch.setattr(chat_module, "settings", lambda: cfg)
    step = StepContext("run1", "ask", 0)
    with running(step):
        chat(_url(server, "ok"), "gemma", prompt="Where is my order?", max_tokens=16)
    assert step.spent == [(pytest.approx((12 * 2.0 + 3 * 10.0) / 1e6), 15)]
    other = StepContext("run1", "ask2", 0)
    with running(other):
        chat(_url(server, "unpriced"), "gemma", prompt="Hi", max_tokens=16)
    assert other.spent == [(0.0, 15)]
