"""The io ops' connection pool (workers/ops/httppool.py) against a real local HTTP/1.1
server: httpcore's rules kept (keep-alive reuse, the keep-alive limit), its bookkeeping
linear in the pool's connections instead of quadratic."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pytest

from workers.ops.httppool import Pool


class _Gather(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gather: threading.Barrier | None = None

    def do_GET(self) -> None:
        if self.path == "/gather" and self.gather is not None:
            self.gather.wait(timeout=10)  # answers once every call waits: one connection each
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Gather)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _open(pool: httpcore.ConnectionPool, url: str, n: int) -> None:
    """``n`` calls at once, so the pool opens ``n`` connections; all idle afterwards."""
    _Gather.gather = threading.Barrier(n)
    calls = [threading.Thread(target=pool.request, args=("GET", f"{url}/gather")) for _ in range(n)]
    for t in calls:
        t.start()
    for t in calls:
        t.join()
    _Gather.gather = None


def _idle_checks(pool: httpcore.ConnectionPool, url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many times one more call asks a connection whether it is idle."""
    asked = [0]
    real = httpcore.HTTPConnection.is_idle

    def counted(self: httpcore.HTTPConnection) -> bool:
        asked[0] += 1
        return real(self)

    monkeypatch.setattr(httpcore.HTTPConnection, "is_idle", counted)
    assert pool.request("GET", f"{url}/ok").status == 200
    monkeypatch.setattr(httpcore.HTTPConnection, "is_idle", real)
    return asked[0]


@pytest.mark.parametrize("kind", [Pool, httpcore.ConnectionPool])
def test_a_call_looks_at_each_connection_a_few_times(
    kind: type[httpcore.ConnectionPool], server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = kind(max_connections=None, max_keepalive_connections=256)
    _open(pool, server, 64)
    asked = _idle_checks(pool, server, monkeypatch)
    if kind is Pool:
        assert asked <= 4 * 64, asked  # linear: a pass per request and per response
    else:
        assert asked > 64 * 64, asked  # httpcore's own: a count of all per idle connection
    pool.close()


def test_keep_alive_reuse_and_limit_are_httpcores(server: str) -> None:
    pool = Pool(max_connections=None, max_keepalive_connections=4)
    _open(pool, server, 10)
    assert len(pool.connections) <= 10
    assert pool.request("GET", f"{server}/ok").status == 200
    # surplus idle connections closed down to the keep-alive limit (httpcore's count)
    assert len(pool.connections) <= 4
    before = list(pool.connections)
    assert pool.request("GET", f"{server}/ok").status == 200
    assert pool.connections[0] in before  # reused, not a new connection
    pool.close()


def test_a_pool_at_its_connection_limit_makes_room_or_waits(server: str) -> None:
    pool = Pool(max_connections=2, max_keepalive_connections=2)
    _open(pool, server, 2)
    for _ in range(5):
        assert pool.request("GET", f"{server}/ok").status == 200
    assert len(pool.connections) <= 2
    pool.close()


class _HangsUp(BaseHTTPRequestHandler):
    """Answers keep-alive, then hangs up right away (as a server whose idle timeout is
    short): the client holds an idle connection that the server has closed."""

    protocol_version = "HTTP/1.1"
    opened = 0

    def setup(self) -> None:
        type(self).opened += 1
        super().setup()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        self.wfile.flush()
        self.close_connection = True


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HangsUp)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    pool = Pool(max_connections=None, max_keepalive_connections=8)
    try:
        for _ in range(5):  # each call finds the last one's connection hung up: a new one
            assert pool.request("GET", f"{url}/x").status == 200
            time.sleep(0.05)
        assert _HangsUp.opened == 5
    finally:
        pool.close()
        httpd.shutdown()
