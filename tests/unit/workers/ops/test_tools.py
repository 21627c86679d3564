"""Tool ops against real local servers and a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.sdk.process import settings
from fleet.sdk.step import StepContext, running
from workers.ops import tools
from workers.ops.tools import DeadlineExceeded, Rule, Target, ToolError, http_request


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/ok":
            self._reply(200, json.dumps({"status": "shipped"}), "application/json")
        elif self.path == "/html":
            self._reply(200, "<html>maintenance</html>", "text/html")
        elif self.path == "/flaky":  # 500 twice, then fine
            ok = self.hits[self.path] > 2
            self._reply(
                200 if ok else 500, json.dumps({"n": self.hits[self.path]}), "application/json"
            )
        elif self.path == "/down":
            self._reply(503, "{}", "application/json")
        elif self.path == "/hop":
            self._redirect("/ok")
        elif self.path == "/escape":
            self._redirect("http://example.com/orders")
        elif self.path == "/big":
            self._reply(200, "x" * (2 << 20), "text/plain")
        elif self.path == "/drip":  # headers at once, then a byte every 0.2 s for a minute
            self.send_response(200)
            self.send_header("Content-Length", "300")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(300):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
        elif self._credentials():
            pass
        elif self.path == "/slow":
            time.sleep(1.0)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                self._reply(200, "{}", "application/json")
        else:
            self._reply(404, "{}", "application/json")

    def do_POST(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if not self._credentials():
            self._reply(404, "{}", "application/json")

    def _credentials(self) -> bool:
        """/echo says which credentials reached this origin; /same and /cross/PORT redirect
        to it on this origin or on another (the same host, another port)."""
        if self.path == "/echo":
            auth = self.headers.get("Authorization")
            key = self.headers.get("Idempotency-Key")
            self._reply(200, json.dumps({"auth": auth, "key": key}), "application/json")
        elif self.path == "/same":
            self._redirect("/echo")
        elif self.path.startswith("/cross/"):
            self._redirect(f"http://127.0.0.1:{self.path.rsplit('/', 1)[1]}/echo")
        else:
            return False
        return True

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self, code: int, body: str, ctype: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_ok(server: str) -> None:
    out = http_request(f"{server}/ok")
    assert out["status"] == 200 and out["json"] == {"status": "shipped"} and out["attempts"] == 1


def test_http_accepted_error_status_is_an_answer(server: str) -> None:
    with pytest.raises(ToolError, match="answered 404"):
        http_request(f"{server}/no-such-order", retries=0)
    out = http_request(f"{server}/no-such-order", retries=0, accept=[404])
    assert out["status"] == 404 and out["attempts"] == 1  # a "no such order" reply, kept


def test_http_retries_5xx_with_backoff(server: str) -> None:
    out = http_request(f"{server}/flaky", retries=2, backoff=0.01)
    assert out["json"] == {"n": 3} and out["attempts"] == 3


def test_http_gives_up_after_retries(server: str) -> None:
    with pytest.raises(ToolError, match=r"failed after 2 attempt\(s\): status 503"):
        http_request(f"{server}/down", retries=1, backoff=0.01)


def test_http_timeout_is_retried_then_fails(server: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"ReadTimeout|DeadlineExceeded"):
        http_request(f"{server}/slow", timeout=0.2, retries=1, backoff=0.01)
    assert time.monotonic() - start < 1.5  # two short attempts, not the server's full second


def test_http_non_json_and_404(server: str) -> None:
    with pytest.raises(ToolError, match="non-JSON content: '<html>maintenance</html>'"):
        http_request(f"{server}/html")
    assert http_request(f"{server}/html", expect_json=False)["text"].startswith("<html>")
    with pytest.raises(ToolError, match="answered 404"):
        http_request(f"{server}/nothing")


def test_http_allowlist() -> None:
    with pytest.raises(PermissionError, match=r"http://example\.com:80/orders/1 is not in"):
        http_request("http://example.com/orders/1")
    with pytest.raises(ValueError, match="only http and https"):
        http_request("file:///etc/passwd")


@pytest.mark.parametrize(
    ("entry", "url", "allowed"),
    [
        ("api.shop.test", "https://api.shop.test/orders", True),
        ("api.shop.test", "http://api.shop.test:8080/orders", False),  # bare host: default port
        ("api.shop.test:8080", "http://api.shop.test:8080/x", True),
        ("https://api.shop.test/v1/", "https://api.shop.test/v1/orders", True),
        ("https://api.shop.test/v1/", "https://api.shop.test/admin", False),
        ("https://api.shop.test/v1/", "http://api.shop.test/v1/orders", False),
        ("127.0.0.1:*", "http://127.0.0.1:6553/", True),
        ("[::1]:*", "http://[::1]:6553/", True),  # IPv6 with any port (was "bad port")
        ("[::1]:8080", "http://[::1]:8080/", True),
        ("[::1]:8080", "http://[::1]:8081/", False),
        ("127.0.0.1", "http://127.1/", False),  # no address tricks: hosts compare as written
        ("127.0.0.1", "http://0x7f000001/", False),
    ],
)
def test_allowlist_rules_are_scheme_host_port_and_path(entry: str, url: str, allowed: bool) -> None:
    assert Rule.parse(entry).allows(Target.of(url)) is allowed


def test_the_fleet_services_are_refused_whatever_the_allowlist() -> None:
    cfg = settings()
    broker = cfg.broker_url.replace("redis://", "http://").rsplit("/", 1)[0]
    for url, name in (
        (f"{broker}/", "the broker"),
        (f"http://localhost:{cfg.flower_port}/api/worker/shutdown/x", "Flower"),
        (f"http://127.0.0.1:{cfg.metrics_port}/metrics", "the metrics endpoint"),
    ):
        with pytest.raises(PermissionError, match=f"points at {name}"):
            http_request(url, method="POST")
    with pytest.raises(PermissionError, match="'SET' is not an HTTP method"):
        http_request(f"{broker}/pwned", method="SET")


@pytest.mark.parametrize(
    "url", ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E%2E%2Fadmin", "/v1/./../admin"]
)
def test_a_path_with_dot_segments_is_not_sent(url: str) -> None:
    """The server would resolve it to a path outside the allowed prefix."""
    with pytest.raises(PermissionError, match=r"'\.' or '\.\.' segments"):
        Target.of(f"https://api.shop.test{url}")


def test_an_amqp_broker_without_a_port_protects_5672(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = settings().model_copy(update={"broker_url": "amqp://guest@127.0.0.1//"})
    monkeypatch.setattr(tools, "settings", lambda: cfg)
    services = tools._fleet_services()
    assert ("127.0.0.1", 5672, "the broker") in services  # it was 6379, Redis's port
    with pytest.raises(PermissionError, match="points at the broker"):
        tools.check_url("http://127.0.0.1:5672/", "POST")


def test_credentials_stay_with_their_origin_across_redirects(server: str) -> None:
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        auth = {"Authorization": "Bearer t0ken"}
        same = http_request(f"{server}/same", headers=auth)
        assert same["json"]["auth"] == "Bearer t0ken"
        port = other.server_address[1]
        crossed = http_request(f"{server}/cross/{port}", headers=auth)
        assert crossed["json"]["auth"] is None  # it was forwarded to the other origin
    finally:
        other.shutdown()


def test_redirects_are_followed_only_within_the_allowlist(server: str) -> None:
    assert http_request(f"{server}/hop")["json"] == {"status": "shipped"}
    with pytest.raises(PermissionError, match=r"example\.com"):
        http_request(f"{server}/escape")


def test_a_slow_drip_server_meets_the_whole_deadline(server: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match="DeadlineExceeded"):
        http_request(f"{server}/drip", timeout=1.0, retries=0, expect_json=False)
    assert time.monotonic() - start < 2.0  # per-read timeouts alone would wait a minute


def test_bodies_are_capped_while_streaming(server: str) -> None:
    with pytest.raises(ToolError, match="body over"):
        http_request(f"{server}/big", expect_json=False)


def test_calls_that_change_things_carry_the_steps_idempotency_key(server: str) -> None:
    """The same key for every retry and redelivery of a step (run id and node path), so the
    service can do the work once; none on safe methods or outside a step."""
    step = StepContext("run1", "tools#2/order", attempt=3)
    with running(step):
        posted = http_request(f"{server}/echo", method="POST", json_body={"order": 1})
        got = http_request(f"{server}/echo")
        own = http_request(f"{server}/echo", method="POST", headers={"idempotency-key": "mine"})
    assert posted["json"]["key"] == "run1:tools#2/order"
    assert got["json"]["key"] is None
    assert own["json"]["key"] == "mine"
    assert http_request(f"{server}/echo", method="POST")["json"]["key"] is None  # no step


def test_no_attempt_outlives_its_step(server: str) -> None:
    """/slow answers in 1 s, well within the call's own 5-s timeout: the call would succeed.
    Inside a step with 0.5 s left it is cut at the step's deadline instead, and once that has
    passed no further attempt starts (attempts used to go on after the run had failed)."""
    late = StepContext("r", "slow", 0, deadline=time.time() + 0.5)
    with running(late), pytest.raises(DeadlineExceeded, match="deadline has passed"):
        http_request(f"{server}/slow", retries=5, backoff=0.01)
    hits = _Handler.hits.get("/slow", 0)
    over = StepContext("r", "late", 0, deadline=time.time() - 1)
    with running(over), pytest.raises(DeadlineExceeded, match="deadline has passed"):
        http_request(f"{server}/slow")
    assert _Handler.hits.get("/slow", 0) == hits  # not even one more request
    assert http_request(f"{server}/slow")["status"] == 200  # outside a step: it answers
