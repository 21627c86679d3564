"""The fleet's own services are judged by the address a call reaches (issue 41, from
docs/reliability.md's "not done yet"): every spelling of a refused address, and the address
each connection is really made to -- not a name's first answer.

The servers are real (a local HTTP server stands for the metrics endpoint, so a call that
got through is seen to get through); only DNS answers, which come from outside the machine,
are faked, at ``socket.getaddrinfo``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleet.sdk.process import settings
from workers.ops import tools
from workers.ops.chat import chat
from workers.ops.tools import http_request


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A live HTTP server on 127.0.0.1 that the config names as the metrics endpoint, and an
    allowlist that would let a workflow reach any port of the names and spellings tried."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = int(httpd.server_address[1])
    allow = ["rebind.test:*", "[::ffff:127.0.0.1]:*", "[::ffff:7f00:1]:*", "127.0.0.2:*"]
    cfg = settings().model_copy(update={"metrics_port": port, "http_allow": allow})
    monkeypatch.setattr(tools, "settings", lambda: cfg)
    yield port
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "127.0.0.2"])
def test_every_spelling_of_a_refused_address_is_refused(metrics: int, host: str) -> None:
    """http://[::ffff:127.0.0.1]:PORT/ is 127.0.0.1:PORT; 127.0.0.2 is this host too."""
    with pytest.raises(PermissionError, match="points at the metrics endpoint"):
        http_request(f"http://{host}:{metrics}/metrics", retries=0)
    broker_port = settings().broker_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(PermissionError, match="points at the broker"):
        tools.check_url(f"http://[::ffff:127.0.0.1]:{broker_port}/", "POST")


def test_llm_chat_refuses_a_mapped_address_of_a_service(metrics: int) -> None:
    with pytest.raises(PermissionError, match="points at the metrics endpoint"):
        chat(f"http://[::ffff:127.0.0.1]:{metrics}/v1", "m", prompt="hi", retries=0)


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """rebind.test answers a public address the first time it is asked, this host after:
    a DNS rebinding attack. The answers given are listed."""
    real = socket.getaddrinfo
    given: list[str] = []

    def answer(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = "203.0.113.7" if not given else "127.0.0.1"
        given.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    return given


def test_a_name_that_resolves_to_a_service_when_it_connects_is_refused(
    metrics: int, rebinding: list[str]
) -> None:
    """The URL's check saw 203.0.113.7; the connection would have gone to the metrics
    endpoint on 127.0.0.1 (on the old code it did, and the call succeeded). The address is
    resolved once, judged, and connected to as judged."""
    with pytest.raises(PermissionError, match=r"127\.0\.0\.1 \(the metrics endpoint\)"):
        http_request(f"http://rebind.test:{metrics}/metrics", retries=0)
    assert rebinding[0] == "203.0.113.7" and rebinding[-1] == "127.0.0.1"


def test_a_name_is_connected_to_at_the_address_that_was_judged(
    metrics: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name the guard lets through still works: resolved once, for its connection, which
    is made to the address judged (the URL's check resolves a name only on a service's
    port)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def answer(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "pinned.test":
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    cfg = settings().model_copy(update={"http_allow": ["pinned.test:*"]})
    monkeypatch.setattr(tools, "settings", lambda: cfg)
    with ThreadingHTTPServer(("127.0.0.1", 0), _Metrics) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        port = httpd.server_address[1]
        assert http_request(f"http://pinned.test:{port}/x", retries=0)["status"] == 200
        httpd.shutdown()
    assert asked == ["pinned.test"]
