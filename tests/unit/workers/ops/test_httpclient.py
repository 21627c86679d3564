"""The io ops' shared HTTP client, against a real local HTTP/1.1 server: calls reuse keep-alive
connections, no thread is started per call, a host's calls in flight are bounded, a forked
child makes its own client."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.sdk.process import settings
from workers.ops import httpclient, tools
from workers.ops.tools import ToolError, http_request


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection open between requests
    connections = 0
    gather = threading.Barrier(20)  # /gather answers once 20 calls wait at once (or 10 s)
    gathered: list[bool] = []

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.6)
        if self.path == "/gather":
            try:
                self.gather.wait(timeout=10)
                self.gathered.append(True)
            except threading.BrokenBarrierError:
                self.gathered.append(False)
        data = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _KeepAlive.connections = 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_calls_share_one_client_and_its_keepalive_connection(server: str) -> None:
    for _ in range(20):
        assert http_request(f"{server}/ok")["json"] == {"path": "/ok"}
    assert _KeepAlive.connections == 1  # one TCP connection (and TLS context) for all 20
    assert httpclient.shared() is httpclient.shared() and len(httpclient.shared()) == 1


def test_calls_wait_at_once_beyond_a_pools_default_size(server: str) -> None:
    """20 calls to one host are in flight together (httpcore's pool holds 10 by default):
    the server answers only once all 20 wait."""
    _KeepAlive.gathered.clear()
    calls = [threading.Thread(target=http_request, args=(f"{server}/gather",)) for _ in range(20)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    assert _KeepAlive.gathered == [True] * 20


def test_many_calls_are_held_in_small_pools(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore's pool scans all its connections on every request: 20 calls at once with
    pools of 5 open 4 pools, and every call still reaches the server at once."""
    monkeypatch.setattr(httpclient, "SHARD_SIZE", 5)
    monkeypatch.setattr(httpclient, "_shared", None)
    _KeepAlive.gathered.clear()
    calls = [threading.Thread(target=http_request, args=(f"{server}/gather",)) for _ in range(20)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    assert _KeepAlive.gathered == [True] * 20
    assert len(httpclient.shared()) == 4
    assert http_request(f"{server}/ok")["status"] == 200  # later calls reuse the pools
    assert len(httpclient.shared()) == 4


def test_no_thread_is_started_per_call(server: str) -> None:
    """20 calls waiting at once on 20 threads: the process has 20 more threads, not 40."""
    before = threading.active_count()
    most: list[int] = []
    calls = [threading.Thread(target=http_request, args=(f"{server}/slow",)) for _ in range(20)]
    for t in calls:
        t.start()
    for _ in range(5):
        time.sleep(0.1)
        most.append(threading.active_count())
    for t in calls:
        t.join()
    assert max(most) <= before + 20 + 20  # + the server's 20 handler threads
    names = {t.name for t in threading.enumerate()}
    assert "fleet-deadline" not in names


def test_a_hosts_calls_in_flight_are_bounded(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With http_per_host = 1, a second call to the same host waits for the first; one that
    cannot get a slot within its deadline fails saying why."""
    cfg = settings().model_copy(update={"http_per_host": 1})
    monkeypatch.setattr(tools, "settings", lambda: cfg)
    monkeypatch.setattr(httpclient, "_shared", None)  # fresh slots for this limit
    errors: list[str] = []

    def call(timeout: float) -> None:
        try:
            http_request(f"{server}/slow", timeout=timeout, retries=0)
        except ToolError as exc:
            errors.append(str(exc))

    first = threading.Thread(target=call, args=(5.0,))
    first.start()
    time.sleep(0.15)
    start = time.monotonic()
    call(0.3)  # the slot is held for 0.6 s
    assert time.monotonic() - start < 0.6
    first.join()
    assert len(errors) == 1 and "http_per_host" in errors[0], errors


def test_a_forked_child_makes_its_own_client(server: str) -> None:
    http_request(f"{server}/ok")
    parent = httpclient.shared()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's client is reused
        signal.alarm(20)  # a child stuck on a lock its parent's threads held ends here
        os.close(read)
        ok = httpclient._shared is None and http_request(f"{server}/ok")["status"] == 200
        os.write(write, b"1" if ok and httpclient.shared() is not parent else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers itself: it records the absolute URL it was asked for."""

    asked: list[str] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        data = json.dumps({"via": "proxy"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_proxy_in_the_environment_is_used(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured as httpx does by default (a worker behind an egress proxy)."""
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setattr(httpclient, "_shared", None)  # clients made with this environment
    try:
        assert http_request(f"{server}/ok")["json"] == {"via": "proxy"}
        assert _Proxy.asked == [f"{server}/ok"]
    finally:
        proxy.shutdown()
        monkeypatch.setattr(httpclient, "_shared", None)
