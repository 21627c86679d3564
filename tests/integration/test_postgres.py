"""db.query against a real PostgreSQL server, through a role that may only SELECT: from the
op directly (read-only session, statement timeout, grants) and as a step on the fleet."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import psycopg
import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.sdk.process import settings
from tests.support.servers import start_postgres
from workers.ops import db
from workers.ops.db import QueryError, db_query

pytestmark = pytest.mark.integration

SETUP = """
CREATE DATABASE shop;
"""
SCHEMA = """
CREATE TABLE orders (id integer PRIMARY KEY, status text NOT NULL, item text NOT NULL);
INSERT INTO orders VALUES (1042, 'shipped', 'blender'), (1043, 'processing', 'kettle');
CREATE TABLE payroll (name text, salary integer);
CREATE ROLE fleet_reader LOGIN;
GRANT CONNECT ON DATABASE shop TO fleet_reader;
GRANT USAGE ON SCHEMA public TO fleet_reader;
GRANT SELECT ON orders TO fleet_reader;
"""


@pytest.fixture(scope="module")
def reader_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = int(os.environ["FLEET_TEST_PG_PORT"])  # FLEET_DB_ALLOW names it (tests/conftest.py)
    server = start_postgres(tmp_path_factory.mktemp("postgres"), port)
    admin = server.extra["url"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop")
    with psycopg.connect(admin.rsplit("/", 1)[0] + "/shop", autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield f"postgresql://fleet_reader@127.0.0.1:{port}/shop"
    server.stop()


def test_reads_through_a_select_only_role(reader_url: str) -> None:
    out = db_query("SELECT status, item FROM orders WHERE id = %s", reader_url, [1042])
    assert out == {"rows": [{"status": "shipped", "item": "blender"}], "count": 1}
    named = db_query("SELECT id FROM orders WHERE status = %(s)s", reader_url, {"s": "processing"})
    assert named["rows"] == [{"id": 1043}]


def test_writes_other_tables_and_runaways_are_refused(reader_url: str) -> None:
    with pytest.raises(PermissionError, match="read-only"):
        db_query("UPDATE orders SET status = 'lost'", reader_url)
    # passes the statement check, refused by the read-only session
    with pytest.raises(QueryError, match="read-only transaction"):
        db_query(
            "WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone", reader_url
        )
    with pytest.raises(QueryError, match="permission denied"):  # the role's grants
        db_query("SELECT * FROM payroll", reader_url)
    with pytest.raises(QueryError, match="statement timeout"):
        db_query("SELECT pg_sleep(5)", reader_url, timeout=0.5)
    assert db_query("SELECT count(*) AS n FROM orders", reader_url)["rows"] == [{"n": 2}]


def test_calls_share_a_pool_of_connections(
    reader_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sequential calls reuse the pool's connections (four at most: one in use, and those
    returned that the pool's three workers are still resetting -- on a busy machine a reset
    can outlast the next calls); each keeps its own statement timeout
    (a short one does not stay on the pooled connection for the next call); twelve calls at
    once use at most db_pool_size connections."""
    pids = {
        db_query("SELECT pg_backend_pid() AS pid", reader_url)["rows"][0]["pid"] for _ in range(10)
    }
    assert len(pids) <= 4  # a connection per call would be ten (seen: 3, on a busy machine)
    with pytest.raises(QueryError, match="statement timeout"):
        db_query("SELECT pg_sleep(2)", reader_url, timeout=0.3)
    slow = db_query("SELECT pg_sleep(0.5) AS s, pg_backend_pid() AS pid", reader_url, timeout=5)
    assert slow["count"] == 1  # the 0.3-s timeout stayed with its own transaction
    cfg = settings().model_copy(update={"db_pool_size": 3})
    monkeypatch.setattr(db, "settings", lambda: cfg)
    pools = db._Pools()  # a pool of three for this server
    monkeypatch.setattr(db, "_pools", pools)
    seen: list[int] = []

    def call() -> None:
        out = db_query("SELECT pg_backend_pid() AS pid, pg_sleep(0.3) AS s", reader_url)
        seen.append(out["rows"][0]["pid"])

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pools.close()
    assert len(seen) == 12 and len(set(seen)) <= 3  # twelve waits, three connections


def test_no_session_state_of_one_query_reaches_the_next(
    reader_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only statement may still change its session (set_config(..., false), an
    advisory lock): the pooled connection is reset before the next call."""
    cfg = settings().model_copy(update={"db_pool_size": 1})  # the same connection each time
    monkeypatch.setattr(db, "settings", lambda: cfg)
    pools = db._Pools()
    monkeypatch.setattr(db, "_pools", pools)
    db_query("SELECT set_config('search_path', 'pg_catalog', false) AS s", reader_url)
    db_query("SELECT pg_advisory_lock(42) AS locked", reader_url)
    after = db_query(
        "SELECT current_setting('search_path') AS path, "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory') AS locks",
        reader_url,
    )
    assert db_query("SELECT count(*) AS n FROM orders", reader_url)["rows"] == [{"n": 2}]
    pools.close()
    assert after["rows"] == [{"path": '"$user", public', "locks": 0}]


def test_a_server_not_in_db_allow_is_refused(reader_url: str) -> None:
    other = reader_url.replace("127.0.0.1", "localhost")
    with pytest.raises(PermissionError, match="not in db_allow"):
        db_query("SELECT 1", other)


def test_a_workflow_step_queries_postgres_on_the_io_class(reader_url: str, client: Fleet) -> None:
    wf = Workflow("pg-lookup", inputs=["params", "db"])
    q = wf.step(
        "lookup",
        "db.query",
        sql="SELECT status FROM orders WHERE id = %s",
        url=wf.input("db"),
        params=wf.input("params"),
    )
    wf.output("rows", q["rows"])
    run = client.submit(wf, {"params": [1043], "db": reader_url})
    assert run.get(timeout=30)["rows"] == [{"status": "processing"}]
    (entry,) = run.trace()
    assert entry.cls == "io"


def test_a_statement_repeated_across_resets_still_runs(reader_url: str) -> None:
    """The same statement, called many times on the pool's reset connections, keeps running: a
    connection prepares nothing on the server, which DISCARD ALL would drop under psycopg's
    cache (CI met "prepared statement _pg3_0 does not exist" on the sixth call)."""
    for _ in range(30):
        out = db_query("SELECT status FROM orders WHERE id = %s", reader_url, [1042])
        assert out["rows"] == [{"status": "shipped"}]
