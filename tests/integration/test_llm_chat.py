"""llm.chat against llama-cpp-python's own OpenAI-compatible server (``python -m
llama_cpp.server``, what a fleet would point it at), serving the fleet's Gemma 3 270M GGUF
behind an API key: called directly, and as a step on a fleet of real workers.

Why llm.chat is compared with the server's raw completion and not with llm.generate alone:
llm.generate completes a raw prompt (no chat template; its text tokenized as plain text),
while /chat/completions renders the conversation with a chat template whose turn markers
(``<start_of_turn>``) are special tokens -- tokens no llm.generate prompt can contain. No chat
format renders a user message as itself, so the two cannot see the same tokens. The chain is
therefore checked link by link, each link token-identical: llm.chat's answer is the server's
greedy completion of the chat-templated prompt (the same prompt tokens), and the server's raw
completion of a prompt is llm.generate's on that prompt (same GGUF, same greedy decode).

llama.cpp is not batch-invariant: a prompt evaluated whole (cold) and one whose cached prefix
is reused (warm: only the last token evaluated) may break a greedy near-tie differently, and
this small base model has many. So the raw completion that llm.chat is compared with runs in
the same state as the call: both right after the same prompt.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig, load_config
from fleet.deploy.local import LocalFleet, free_port
from fleet.errors import WorkflowFailed
from fleet.messaging.app import create_app
from fleet.paths import EXAMPLES
from fleet.sdk.process import settings
from workers.ops import tools
from workers.ops.chat import chat
from workers.ops.models import DEFAULT_LLM, gguf_path
from workers.ops.tools import ToolError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "local-llm"  # the secret's NAME: its key is in FLEET_SECRET_LOCAL_LLM on a worker
VARIABLE = "FLEET_SECRET_LOCAL_LLM"
PROMPT = "Question: What is the capital of France?\nAnswer:"
MAX_TOKENS = 12
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "integer"}},
    "required": ["order_id"],
}


@dataclass(frozen=True)
class Server:
    url: str  # the base URL: http://127.0.0.1:PORT/v1
    port: int
    key: str
    log: Path


def _wait_until_up(proc: subprocess.Popen[bytes], server: Server, within: float) -> None:
    deadline = time.monotonic() + within
    auth = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {server.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/models", headers=auth, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer in {within} s: {server.log.read_text()[-2000:]}")


def _serve(log: Path, key: str | None) -> Iterator[Server]:
    """llama-cpp-python's server on a free port, with Gemma's chat format (the GGUF has no
    chat template; the server's fallback would be llama-2's), behind ``key`` if given."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python's server extras are missing ({exc}): the dev extras")
    port = free_port()
    found = Server(f"http://127.0.0.1:{port}/v1", port, key or "", log)
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path(DEFAULT_LLM))]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--chat_format", "gemma"]
    argv += [f"--api_key={key}"] if key else []  # a key may begin with "-"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, found, within=60)
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server behind an API key."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    yield from _serve(log, secrets.token_urlsafe(24))


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server without a key: what the session's test fleet, holding no secret, may call
    (its workers allow any local port)."""
    yield from _serve(tmp_path_factory.mktemp("llama-open") / "server.log", None)


@pytest.fixture()
def allowed(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """This process may call the server (its port alone), and holds its key as a worker
    would; the key is sent by llm.chat, never passed to it."""
    cfg = settings().model_copy(update={"http_allow": [f"127.0.0.1:{server.port}"]})
    monkeypatch.setattr(tools, "settings", lambda: cfg)
    monkeypatch.setenv(VARIABLE, server.key)
    return server


def _templated(prompt: str) -> tuple[str, str]:
    """The server's rendering of a one-user-message conversation, and its stop string."""
    from llama_cpp.llama_chat_format import format_gemma

    rendered = format_gemma(messages=[{"role": "user", "content": prompt}])
    assert isinstance(rendered.stop, str)
    return rendered.prompt, rendered.stop


def _raw(server: Server, prompt: str, **params: Any) -> dict[str, Any]:
    """The server's own completion of ``prompt`` as text (no template), greedy."""
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **params}
    auth = {"Authorization": f"Bearer {server.key}"}
    reply = httpx.post(f"{server.url}/completions", json=body, headers=auth, timeout=60)
    reply.raise_for_status()
    data: dict[str, Any] = reply.json()
    return data


def _raw_of_chat(server: Server, prompt: str) -> dict[str, Any]:
    text, stop = _templated(prompt)
    return _raw(server, text, stop=[stop])


def test_chat_is_the_servers_greedy_completion_of_the_templated_prompt(allowed: Server) -> None:
    _raw_of_chat(allowed, PROMPT)  # the prompt's KV in the server: the next two run warm
    out = chat(
        allowed.url, "gemma", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, api_key=SECRET
    )
    raw = _raw_of_chat(allowed, PROMPT)
    assert out["text"] == raw["choices"][0]["text"] and out["text"].strip()
    assert out["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"] > 0  # the same tokens
    assert out["usage"]["completion_tokens"] == raw["usage"]["completion_tokens"] <= MAX_TOKENS
    assert out["finish_reason"] in ("stop", "length") and out["tool_calls"] == []


def test_the_servers_raw_completion_is_llm_generates(allowed: Server) -> None:
    """The other link: the same prompt, the same tokens, the same greedy text. The server's
    repeat penalty (1.1 by default) is turned off: llm.generate has none."""
    from workers.ops.llm import generate

    local = generate(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
    raw = _raw(allowed, PROMPT, repeat_penalty=1.0)
    assert raw["choices"][0]["text"].strip() == local["text"] and local["text"]
    assert raw["usage"]["prompt_tokens"] == local["prompt_tokens"]
    assert raw["usage"]["completion_tokens"] == local["tokens"]


def test_a_forced_tool_call_and_a_json_schema_on_the_real_server(allowed: Server) -> None:
    """The request forms llm.chat sends (tools with a named tool_choice; response_format
    json_object with a schema) are the ones llama-cpp-python turns into grammars."""
    function = {"name": "order_status", "description": "An order's status"}
    tool: dict[str, Any] = {
        "type": "function",
        "function": {**function, "parameters": ORDER_SCHEMA},
    }
    called = chat(
        allowed.url,
        "gemma",
        prompt="Where is my order 1042?",
        tools=[tool],
        tool_choice="order_status",
        max_tokens=32,
        api_key=SECRET,
    )
    (call,) = called["tool_calls"]
    assert call["function"]["name"] == "order_status" and called["finish_reason"] == "tool_calls"
    assert isinstance(json.loads(call["function"]["arguments"])["order_id"], int)
    assert called["text"] == ""
    shaped = chat(
        allowed.url,
        "gemma",
        prompt="My order 1042 is late. Which order is it?",
        json_schema=ORDER_SCHEMA,
        max_tokens=32,
        api_key=SECRET,
    )
    assert isinstance(json.loads(shaped["text"])["order_id"], int)


def test_the_server_refuses_a_missing_or_wrong_key(
    allowed: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ToolError, match="answered 401: no API key was sent"):
        chat(allowed.url, "gemma", prompt=PROMPT, max_tokens=2)
    monkeypatch.setenv("FLEET_SECRET_STALE", "not-the-key-9f8e7d")
    with pytest.raises(ToolError) as err:
        chat(allowed.url, "gemma", prompt=PROMPT, max_tokens=2, api_key="stale")
    assert "secret 'stale' (FLEET_SECRET_STALE) was refused" in str(err.value)
    assert "not-the-key-9f8e7d" not in str(err.value)


def test_a_step_on_a_fleet_whose_worker_holds_the_key(
    server: Server, fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """A one-step workflow on an io worker of a fleet of its own (its own broker): the worker
    loads llm.chat (FLEET_OP_MODULES, until the entry point lists it), may reach the server's
    port alone, and holds the key; the client has neither. The key is in no output, trace or
    worker log; a run without it fails at its node with the server's 401."""
    cfg = fleet_cfg.model_copy(
        update={
            "broker_url": f"redis://127.0.0.1:{free_port()}/0",
            "op_modules": ["workers.ops.chat"],
        }
    )
    env = {
        "FLEET_OP_MODULES": "workers.ops.chat",
        "FLEET_HTTP_ALLOW": f"127.0.0.1:{server.port}",
        VARIABLE: server.key,
    }
    with LocalFleet(cfg, ["io"], False, tmp_path, "INFO", lambda _: None, env) as fleet:
        client = Fleet(create_app(cfg), cfg)
        wf = Workflow("ask-llm", inputs=["question"])
        ask = wf.step(
            "ask",
            "llm.chat",
            classes=["io"],
            base_url=server.url,
            model="gemma",
            prompt=wf.input("question"),
            max_tokens=MAX_TOKENS,
            api_key=SECRET,
        )
        wf.output("text", ask["text"])
        wf.output("usage", ask["usage"])
        raw = _raw_of_chat(server, PROMPT)  # the state the step's call then finds
        run = client.submit(wf, {"question": PROMPT})
        result = run.get(timeout=60)
        assert result["text"] == raw["choices"][0]["text"]
        assert result["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]
        (step,) = [e for e in run.trace() if e.node == "ask"]
        assert (step.worker or "").startswith("io@") and step.status == "succeeded"

        # stream: true, followed: the text comes piece by piece before the step ends, and the
        # pieces make the step's output
        streamed = Workflow("ask-llm-streamed", inputs=["question"])
        told = streamed.step("ask", "llm.chat", classes=["io"], base_url=server.url,
                             model="gemma", prompt=streamed.input("question"),
                             max_tokens=MAX_TOKENS, api_key=SECRET, stream=True)  # fmt: skip
        streamed.output("text", told["text"])
        followed = client.submit(streamed, {"question": PROMPT}, follow=True)
        events = list(followed.events(timeout=60))
        pieces = [e["text"] for e in events if e["event"] == "text"]
        kinds = [e["event"] if e["event"] != "step" else e["status"] for e in events]
        assert len(pieces) >= 2 and "".join(pieces) == followed.get(timeout=5)["text"]
        assert kinds.index("text") > kinds.index("started")
        assert kinds.index("succeeded") > max(i for i, k in enumerate(kinds) if k == "text")
        assert kinds[-1] == "end"

        keyless = Workflow("ask-llm-keyless", inputs=["question"])
        bare = keyless.step(
            "ask",
            "llm.chat",
            classes=["io"],
            base_url=server.url,
            model="gemma",
            prompt=keyless.input("question"),
            max_tokens=2,
        )
        keyless.output("text", bare["text"])
        with pytest.raises(WorkflowFailed, match=r"ask.*answered 401: no API key was sent"):
            client.submit(keyless, {"question": PROMPT}).get(timeout=60)

        seen = json.dumps(result) + repr(run.trace())
        logs = "".join(c.log.read_text(errors="replace") for c in fleet.children)
        assert server.key not in seen and server.key not in logs


def test_the_rag_example_answers_from_the_endpoint_when_given_one(
    client: Fleet, open_server: Server
) -> None:
    """fleet/examples/rag.yaml with ``llm_url``: the same retrieval on the fleet's workers,
    the answer from the endpoint -- llm.chat on io, charged its tokens -- and no local model
    step; without it, llm.generate answers (test_ai_ops.py)."""
    kb = client.submit(
        EXAMPLES / "kb_build.yaml", {"docs": client.upload(EXAMPLES / "kb"), "index": "kb-chat"}
    )
    assert kb.get(timeout=300)["count"] >= 4
    question = "Can I return a kettle after three weeks?"
    run = client.submit(
        EXAMPLES / "rag.yaml",
        {"question": question, "index": "kb-chat", "llm_url": open_server.url},
    )
    out = run.get(timeout=300)
    assert any(s.startswith("returns#") for s in out["sources"]), out["sources"]
    assert isinstance(out["answer"], str) and out["answer"].strip(), out
    ran = {e.node: e for e in run.trace() if e.status == "succeeded"}
    assert "answer" not in ran and ran["answer_remote"].cls == "io"
    assert ran["answer_remote"].tokens and ran["answer_remote"].tokens > 0


def test_an_endpoint_class_generates_what_the_local_model_does(
    open_server: Server, tmp_path: Path
) -> None:
    """A class whose model is the endpoint (``endpoint = "local"``): its worker loads no
    model, completes llm.generate's raw prompt at the server, and answers token for token as
    llm.generate does in-process (the server's repeat penalty turned off through the
    endpoint's ``extra``); the step is charged its tokens at the endpoint's prices."""
    from workers.ops.llm import generate

    config = tmp_path / "fleet.toml"
    test_config = (Path(__file__).resolve().parents[1] / "fleet-test.toml").read_text()
    config.write_text(
        test_config
        + f'\n[endpoints.local]\nbase_url = "{open_server.url}"\nprice_in = 1.0\n'
        + "price_out = 4.0\nextra = { repeat_penalty = 1.0 }\n"
        + '\n[classes.llm-api]\npool = "threads"\nconcurrency = 4\nendpoint = "local"\n'
    )
    env = {"FLEET_CONFIG": str(config), "FLEET_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    cfg = load_config(config, env={**os.environ, **env})
    with LocalFleet(cfg, ["io", "llm-api"], False, tmp_path, "INFO", lambda _: None, env):
        client = Fleet(app=create_app(cfg), cfg=cfg)
        wf = Workflow("remote-generate", inputs=["prompt"])
        gen = wf.step(
            "gen",
            "llm.generate",
            prompt=wf.input("prompt"),
            max_tokens=MAX_TOKENS,
            classes=["llm-api"],
        )
        wf.output("text", gen["text"])
        run = client.submit(wf, {"prompt": PROMPT})
        out = run.get(timeout=120)
        (step,) = run.trace()
    local = generate(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
    assert out["text"] == local["text"] and local["text"]
    assert step.cls == "llm-api" and step.tokens == local["prompt_tokens"] + local["tokens"]
    expected = (local["prompt_tokens"] * 1.0 + local["tokens"] * 4.0) / 1e6
    assert step.spent_usd == pytest.approx(expected)
