"""Tool ops against real local servers and a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers.ops.tools import ToolError, db_query, http_request


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
        elif self.path == "/slow":
            time.sleep(1.0)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                self._reply(200, "{}", "application/json")
        else:
            self._reply(404, "{}", "application/json")

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


def test_http_retries_5xx_with_backoff(server: str) -> None:
    out = http_request(f"{server}/flaky", retries=2, backoff=0.01)
    assert out["json"] == {"n": 3} and out["attempts"] == 3


def test_http_gives_up_after_retries(server: str) -> None:
    with pytest.raises(ToolError, match=r"failed after 2 attempt\(s\): status 503"):
        http_request(f"{server}/down", retries=1, backoff=0.01)


def test_http_timeout_is_retried_then_fails(server: str) -> None:
    start = time.monotonic()
    with pytest.raises(ToolError, match="ReadTimeout"):
        http_request(f"{server}/slow", timeout=0.2, retries=1, backoff=0.01)
    assert time.monotonic() - start < 1.5  # two short attempts, not the server's full second


def test_http_non_json_and_404(server: str) -> None:
    with pytest.raises(ToolError, match="non-JSON content: '<html>maintenance</html>'"):
        http_request(f"{server}/html")
    assert http_request(f"{server}/html", expect_json=False)["text"].startswith("<html>")
    with pytest.raises(ToolError, match="answered 404"):
        http_request(f"{server}/nothing")


def test_http_allowlist() -> None:
    with pytest.raises(PermissionError, match=r"'example\.com' is not in the allowlist"):
        http_request("http://example.com/orders/1")
    with pytest.raises(ValueError, match="only http and https"):
        http_request("file:///etc/passwd")


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER, status TEXT)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(1, "shipped"), (2, "late")])
    return path


def test_db_parameterized_read(db: Path) -> None:
    out = db_query("SELECT status FROM orders WHERE id = ?", str(db), [2])
    assert out == {"rows": [{"status": "late"}], "count": 1}
    out = db_query("SELECT id FROM orders WHERE status = :s", f"sqlite:///{db}", {"s": "shipped"})
    assert out["rows"] == [{"id": 1}]


def test_db_is_read_only(db: Path) -> None:
    with pytest.raises(PermissionError, match="read-only"):
        db_query("DELETE FROM orders", str(db))
    with pytest.raises(PermissionError, match="one read-only"):
        db_query("SELECT 1; DROP TABLE orders", str(db))
    with pytest.raises(ToolError, match=r"not authorized|readonly"):
        db_query("WITH x AS (SELECT 1) INSERT INTO orders SELECT 3, 'x'", str(db))
    assert db_query("SELECT count(*) AS n FROM orders", str(db))["rows"] == [{"n": 2}]


def test_db_errors_name_the_problem(db: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        db_query("SELECT 1", str(tmp_path / "missing.sqlite"))
    with pytest.raises(ToolError, match="no such table"):
        db_query("SELECT * FROM customers", str(db))
