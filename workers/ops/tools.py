"""Tool calls for the io class: HTTP (host allowlist, timeouts, retries) and read-only SQL."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleet.registry import op
from fleet.runtime.sdk import settings

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_BODY = 1 << 20  # 1 MiB: a tool answer, not a download


class ToolError(RuntimeError):
    """A tool call failed in a way a retry will not fix (or retries ran out)."""


def _check_host(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"url {url!r}: only http and https are allowed")
    allowed = settings().http_allow
    if (parsed.hostname or "") not in allowed:
        raise PermissionError(
            f"host {parsed.hostname!r} is not in the allowlist {allowed} "
            "(FLEET_HTTP_ALLOW or http_allow in the fleet config)"
        )


def _decode(response: Any, expect_json: bool) -> Any:
    if len(response.content) > MAX_BODY:
        raise ToolError(f"response body is {len(response.content)} bytes (limit {MAX_BODY})")
    if not expect_json:
        return None
    try:
        return response.json()
    except ValueError:
        snippet = response.text[:120].replace("\n", " ")
        raise ToolError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code} with non-JSON content: {snippet!r}"
        ) from None


@op(
    "http.request",
    kind="tool",
    classes=("io", "cpu"),
    outputs=("status", "json", "text", "attempts"),
)
def http_request(
    url: str,
    method: str = "GET",
    params: dict[str, Any] | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    retries: int = 2,
    backoff: float = 0.2,
    expect_json: bool = True,
) -> dict[str, Any]:
    """Call an HTTP API on an allowed host; retry timeouts and 429/5xx with backoff."""
    import httpx

    _check_host(url)
    if not 0 < timeout <= 60:
        raise ValueError(f"timeout must be within (0, 60] seconds, got {timeout}")
    last = ""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(1, retries + 2):
            try:
                response = client.request(
                    method.upper(), url, params=params, json=json_body, headers=headers
                )
            except httpx.TransportError as exc:  # timeouts, refused connections
                last = f"{type(exc).__name__}: {exc or 'no answer'}"
            else:
                if response.status_code not in RETRY_STATUS:
                    if response.status_code >= 400:
                        raise ToolError(f"{method} {url} answered {response.status_code}")
                    return {
                        "status": response.status_code,
                        "json": _decode(response, expect_json),
                        "text": response.text[:MAX_BODY],
                        "attempts": attempt,
                    }
                last = f"status {response.status_code}"
            if attempt <= retries:
                time.sleep(backoff * 2 ** (attempt - 1))
    raise ToolError(f"{method} {url} failed after {retries + 1} attempt(s): {last}")


_READ_ONLY = re.compile(r"^\s*(select|with)\b", re.I)


def _sqlite_path(url: str) -> Path:
    path = Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:") else url).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist")
    return path


def _deny_writes(action: int, *_: Any) -> int:
    allowed = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
    return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY


def _query_sqlite(url: str, sql: str, params: Any, max_rows: int) -> list[dict[str, Any]]:
    uri = f"file:{_sqlite_path(url)}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        conn.set_authorizer(_deny_writes)  # read-only even through a crafted statement
        rows = conn.execute(sql, params or ()).fetchmany(max_rows)
        return [dict(r) for r in rows]


def _query_postgres(url: str, sql: str, params: Any, max_rows: int) -> list[dict[str, Any]]:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise ToolError("PostgreSQL URLs need the 'psycopg' package on the worker") from exc
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchmany(max_rows))


@op("db.query", kind="tool", classes=("io", "cpu"), outputs=("rows", "count"))
def db_query(sql: str, url: str, params: Any = None, max_rows: int = 100) -> dict[str, Any]:
    """A parameterized read-only query: SQLite (a path or sqlite:///path) or postgresql://."""
    if not _READ_ONLY.match(sql) or ";" in sql.strip().rstrip(";"):
        raise PermissionError("db.query runs one read-only SELECT/WITH statement")
    if params is not None and not isinstance(params, list | dict):
        raise ValueError("params must be a list (for ?) or a mapping (for :name)")
    if url.startswith(("postgres://", "postgresql://")):
        rows = _query_postgres(url, sql, params, max_rows)
    else:
        try:
            rows = _query_sqlite(url, sql, params, max_rows)
        except sqlite3.DatabaseError as exc:
            raise ToolError(f"query failed: {exc}") from None
    return {"rows": rows, "count": len(rows)}
