"""``db.query``: one parameterized, read-only SQL statement, on a database any host can reach.

The database is named by URL, never by a path on the client's disk:

- ``artifact://NAME`` (or ``artifact://NAME@VERSION``): a SQLite file published to the
  artifact store (``Fleet.put_sqlite``); each host fetches a version once into its cache and
  opens it read-only.
- ``postgresql://USER@HOST:PORT/DB``: PostgreSQL through psycopg, in a read-only transaction
  with a statement timeout; HOST:PORT must be listed in ``db_allow`` (FLEET_DB_ALLOW), and
  the user should be a role with SELECT rights only (docs/operations.md shows one).
- ``sqlite:///PATH`` or a plain path: a file on the worker under the file roots (a
  single-host set-up).

Read-only three ways: only SELECT/WITH statements pass, a single statement, and the database
itself refuses writes (SQLite's authorizer and ``mode=ro``; PostgreSQL's read-only session).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from fleet.sdk import SQLITE_FILE, SQLITE_KIND, artifacts, op, safe_path, settings, time_left

MAX_CELL_BYTES = 16 << 20  # no 900 MB randomblob()
MAX_ROWS = 10_000  # the most rows a query may ask for
MAX_RESULT_BYTES = 4 << 20  # rows kept in memory while fetching (a step's outputs' limit)

_READ_ONLY = re.compile(r"^\s*(select|with)\b", re.I)


class QueryError(RuntimeError):
    """The query failed in the database (bad SQL, a timeout, a refused write)."""


@op("db.query", kind="tool", classes=("io", "cpu"), outputs=("rows", "count"))
def db_query(
    sql: str, url: str, params: Any = None, max_rows: int = 100, timeout: float = 10.0
) -> dict[str, Any]:
    """A parameterized read-only query (``?``/``:name`` for SQLite, ``%s``/``%(name)s`` for
    PostgreSQL) on ``artifact://NAME[@VERSION]``, ``postgresql://...`` or ``sqlite:///PATH``."""
    if not _READ_ONLY.match(sql) or ";" in sql.strip().rstrip(";"):
        raise PermissionError("db.query runs one read-only SELECT/WITH statement")
    if params is not None and not isinstance(params, list | dict):
        raise ValueError("params must be a list (positional) or a mapping (named)")
    if not 0 < max_rows <= MAX_ROWS:
        raise ValueError(f"max_rows must be within 1..{MAX_ROWS}, got {max_rows}")
    timeout = time_left(timeout)  # the query must not outlive its step: interrupted then
    if timeout <= 0:
        raise QueryError("no time left before the step's deadline")
    if url.startswith(("postgres://", "postgresql://")):
        rows = _query_postgres(url, sql, params, max_rows, timeout)
    else:
        try:
            rows = _query_sqlite(_sqlite_file(url), sql, params, max_rows, timeout)
        except sqlite3.DatabaseError as exc:
            raise QueryError(f"query failed: {exc}") from None
    return {"rows": rows, "count": len(rows)}


def _sqlite_file(url: str) -> Path:
    if url.startswith("artifact://"):
        name, _, version = url.removeprefix("artifact://").partition("@")
        _, folder = artifacts().fetch(SQLITE_KIND, name, version or None)
        return folder / SQLITE_FILE
    raw = url.removeprefix("sqlite:///") if url.startswith("sqlite:") else url
    path = safe_path(raw, "database")
    if not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist")
    return path


def _deny_writes(action: int, *_: Any) -> int:
    allowed = {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,  # a recursive WITH reads only
    }
    return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY


def _query_sqlite(
    path: Path, sql: str, params: Any, max_rows: int, timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    # As a URI (for mode=ro) SQLite decodes %-escapes: the path is quoted, so a file named
    # "..%2F..%2Fsecret.db" inside a file root is that file, not one two folders up.
    uri = f"file:{quote(str(path), safe='/')}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        conn.set_authorizer(_deny_writes)  # read-only even through a crafted statement
        # A statement that runs past the deadline (randomblob(9e8), a cross join) is
        # interrupted inside SQLite, not just abandoned by the step.
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_CELL_BYTES)
        return _take(conn.execute(sql, params or ()), max_rows, dict)


# Connection parameters a workflow's URL may set; the rest (hostaddr, service, passfile,
# options, sslkey, ...) could reach another server or change the session: refused.
URL_PARAMS = {"host", "port", "dbname", "user", "password", "sslmode", "application_name"}


def _take(cursor: Any, max_rows: int, row: Any) -> list[dict[str, Any]]:
    """Up to ``max_rows`` rows, fetched a batch at a time; a result over MAX_RESULT_BYTES is an
    error as soon as it is (150 rows of 1 MB used to grow the io worker by 145 MB)."""
    rows: list[dict[str, Any]] = []
    size = 0
    while len(rows) < max_rows:
        batch = cursor.fetchmany(min(100, max_rows - len(rows)))
        if not batch:
            break
        for item in batch:
            rows.append(row(item))
            size += sum(len(str(v)) for v in rows[-1].values())
        if size > MAX_RESULT_BYTES:
            raise QueryError(f"result over {MAX_RESULT_BYTES} bytes: select fewer rows or columns")
    return rows


def check_db_url(url: str) -> dict[str, str]:
    """The connection parameters of a PostgreSQL URL whose one server ``db_allow`` lists, as
    libpq reads them -- query-string parameters (``?host=...&port=...``) included, which
    override the URL's host; else PermissionError naming what is not allowed."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise ValueError(f"database url: {exc}") from None
    extra = sorted(set(params) - URL_PARAMS)
    if extra:
        raise PermissionError(f"database url: parameter(s) {', '.join(extra)} are not allowed")
    host, port = params.get("host", "").lower(), params.get("port", "5432")
    if "," in host or "," in port or not host or host.startswith("/"):
        raise PermissionError(f"database url: one server by host name, not {host!r}")
    allowed = {entry.strip().lower() for entry in settings().db_allow}
    if f"{host}:{port}" not in allowed:
        raise PermissionError(
            f"database server {host}:{port} is not in db_allow (FLEET_DB_ALLOW=host:port)"
        )
    return params


def _query_postgres(
    url: str, sql: str, params: Any, max_rows: int, timeout: float
) -> list[dict[str, Any]]:
    import psycopg
    import psycopg_pool
    from psycopg.rows import dict_row

    server = check_db_url(url)
    end = time.monotonic() + timeout
    try:
        with _pools.get(server).connection(timeout=timeout) as conn:
            # the statement's own timeout, for this transaction only (a pooled connection
            # serves calls with other deadlines): what is left after waiting for it
            ms = max(1, int((end - time.monotonic()) * 1000))
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{ms}ms",))
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(cast(Any, sql), params or None)
                return _take(cur, max_rows, dict)
    except psycopg_pool.PoolTimeout:  # (an OperationalError: caught first)
        raise QueryError(
            f"no connection to {server['host']}:{server.get('port', '5432')} within "
            f"{timeout:g} s ({settings().db_pool_size} in use by this worker process: "
            "db_pool_size), or the server refused every connection (see the worker's log)"
        ) from None
    except psycopg.Error as exc:
        raise QueryError(f"query failed: {str(exc).strip()}") from None


MAX_POOLS = 8  # PostgreSQL servers and credential sets with a pool, per worker process


class _Pools:
    """One pool of PostgreSQL connections per server and credentials, per process: a
    thousand io threads share ``db_pool_size`` connections each instead of opening one per
    call (TCP, TLS and authentication every time, and as many backends as waits). Every
    connection is read-only for its life and is reset (``DISCARD ALL``) before it serves
    another call, so no session setting, role or lock of one query reaches the next; at most
    ``MAX_POOLS`` pools are kept (the least recently used is closed); a forked child makes
    its own pools."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pools: OrderedDict[str, Any] = OrderedDict()

    def get(self, server: dict[str, str]) -> Any:
        from psycopg.conninfo import make_conninfo

        conninfo = make_conninfo("", **server)  # exactly what was checked
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._pid, self._pools = os.getpid(), OrderedDict()
            pool = self._pools.get(conninfo)
            if pool is None:
                pool = self._pools[conninfo] = _open_pool(conninfo)
                while len(self._pools) > MAX_POOLS:  # each pool holds threads and sockets
                    _, old = self._pools.popitem(last=False)
                    old.close(timeout=0)
            self._pools.move_to_end(conninfo)
        return pool

    def close(self) -> None:
        """Close every pool (their connections and threads)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()


def _open_pool(conninfo: str) -> Any:
    import psycopg_pool

    def configure(conn: Any) -> None:
        conn.read_only = True  # every transaction on it, whatever a statement tries

    def reset(conn: Any) -> None:
        # A read-only statement can still change the session (set_config(..., false),
        # SET ROLE through a function, an advisory lock): none of it outlives its call.
        conn.autocommit = True
        conn.execute("DISCARD ALL")
        conn.autocommit = False

    return psycopg_pool.ConnectionPool(
        conninfo,
        min_size=0,
        max_size=settings().db_pool_size,
        # prepare_threshold None: no server-side prepared statements. DISCARD ALL drops them on
        # the server while psycopg's cache still names them ("prepared statement _pg3_0 does
        # not exist" on a call that repeats a statement after a reset).
        kwargs={
            "options": "-c default_transaction_read_only=on",
            "connect_timeout": 10,
            "prepare_threshold": None,
        },
        configure=configure,
        reset=reset,
        open=True,
        name="fleet-db",
    )


_pools = _Pools()
