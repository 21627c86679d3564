"""db.query on SQLite: a file under the file roots, and a database published to the artifact
store that a host without the file reads (PostgreSQL: tests/integration/test_postgres.py)."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from fleet.client.uploads import put_sqlite
from fleet.sdk import process as sdk
from fleet.sdk.process import data_dir, settings
from fleet.sdk.step import StepContext, running
from fleet.store.artifacts import ArtifactStore
from workers.ops import db as db_ops
from workers.ops.db import QueryError, check_db_url, db_query


@pytest.fixture()
def db() -> Path:
    path = data_dir("test-db") / f"shop-{time.monotonic_ns()}.sqlite"
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
    with pytest.raises(QueryError, match=r"not authorized|readonly"):
        db_query("WITH x AS (SELECT 1) INSERT INTO orders SELECT 3, 'x'", str(db))
    assert db_query("SELECT count(*) AS n FROM orders", str(db))["rows"] == [{"n": 2}]


def test_db_errors_name_the_problem(db: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        db_query("SELECT 1", str(db.parent / "missing.sqlite"))
    with pytest.raises(PermissionError, match="outside the folders ops may use"):
        db_query("SELECT 1", str(tmp_path / "elsewhere.sqlite"))
    with pytest.raises(QueryError, match="no such table"):
        db_query("SELECT * FROM customers", str(db))


def test_a_runaway_query_meets_its_deadline(db: Path) -> None:
    start = time.monotonic()
    forever = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with pytest.raises(QueryError, match="interrupted"):
        db_query(forever, str(db), timeout=0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(QueryError, match="too big"):
        db_query("SELECT length(randomblob(900000000)) AS n", str(db))


def test_a_published_database_is_read_on_a_host_without_the_file(
    db: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = put_sqlite(sdk.artifacts(), "shop-test", db)
    assert url.startswith("artifact://shop-test@")
    # another host: the same store, an empty cache of its own
    other = ArtifactStore(sdk.artifacts().client, tmp_path / "other-host", 3600)
    monkeypatch.setattr(db_ops, "artifacts", lambda: other)
    out = db_query("SELECT status FROM orders WHERE id = ?", url, [1])
    assert out["rows"] == [{"status": "shipped"}]
    assert list((tmp_path / "other-host" / "sqlite" / "shop-test").iterdir())  # fetched once
    latest = db_query("SELECT count(*) AS n FROM orders", "artifact://shop-test")
    assert latest["rows"] == [{"n": 2}]
    with pytest.raises(QueryError, match=r"not authorized|readonly"):
        db_query("WITH x AS (SELECT 1) INSERT INTO orders SELECT 3, 'x'", url)
    with pytest.raises(KeyError, match="no sqlite named 'nowhere'"):
        db_query("SELECT 1", "artifact://nowhere")
    # a name is a folder of the cache: checked with a version given too, not only without
    version = url.rpartition("@")[2]
    for bad in ("../../../tmp", "shop-test/..", "a/b"):
        with pytest.raises(ValueError, match="artifact name"):
            db_query("SELECT 1", f"artifact://{bad}@{version}")
    with pytest.raises(ValueError, match="not a SQLite database"):
        put_sqlite(sdk.artifacts(), "bad", Path(__file__))


def test_postgres_servers_must_be_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PermissionError, match="not in db_allow"):
        check_db_url("postgresql://reader@db.example:5432/shop")
    cfg = settings().model_copy(update={"db_allow": ["db.example:5432"]})
    monkeypatch.setattr(db_ops, "settings", lambda: cfg)
    ok = check_db_url("postgresql://reader@db.example:5432/shop?sslmode=require")
    assert ok == {
        "user": "reader",
        "dbname": "shop",
        "host": "db.example",
        "port": "5432",
        "sslmode": "require",
    }
    # libpq takes host and port from the query string too: they are what is checked
    with pytest.raises(PermissionError, match=r"evil\.example:5432 is not in db_allow"):
        check_db_url("postgresql://reader@db.example:5432/shop?host=evil.example")
    with pytest.raises(PermissionError, match=r"db\.example:6543 is not in db_allow"):
        check_db_url("postgresql://reader@db.example:5432/shop?port=6543")
    for bad, what in (
        ("?hostaddr=10.0.0.9", "parameter(s) hostaddr"),
        ("?options=-c%20default_transaction_read_only%3Doff", "parameter(s) options"),
        ("?service=other", "parameter(s) service"),
        ("?host=/var/run/postgresql", "one server by host name"),
    ):
        with pytest.raises(PermissionError, match=re.escape(what)):
            check_db_url(f"postgresql://reader@db.example:5432/shop{bad}")
    with pytest.raises(PermissionError, match="one server by host name"):
        check_db_url("postgresql://reader@db.example:5432,evil.example:5432/shop")


def test_a_query_does_not_outlive_its_step(db: Path) -> None:
    """db.query's own timeout (10 s by default) is cut to what is left of its step's deadline;
    with none left, it does not start."""
    with (
        running(StepContext("r", "q", 0, deadline=time.time() - 1)),
        pytest.raises(QueryError, match="no time left before the step's deadline"),
    ):
        db_query("SELECT 1", str(db))
    soon = StepContext("r", "q", 0, deadline=time.time() + 2)
    assert soon.cap(10.0) <= 2.0 and soon.cap(0.5) == 0.5
    assert db_query("SELECT 1 AS one", str(db))["rows"] == [{"one": 1}]  # outside a step


def test_percent_escapes_in_a_file_name_stay_in_the_name(tmp_path: Path) -> None:
    """SQLite decodes %-escapes in a file: URI: a file inside a file root named
    "..%2F..%2F...%2Fsecret.db" used to open the database those escapes point at, outside."""
    secret = tmp_path / "secret.db"
    with sqlite3.connect(secret) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('outside')")
    inside = data_dir("escapes").resolve()
    hops = "..%2F" * (len(inside.parts) - 1)  # from this folder up to / exactly
    decoy = inside / f"{hops}{str(secret).lstrip('/').replace('/', '%2F')}"
    decoy.write_bytes(b"")  # an empty file: an empty database, with no table t
    with pytest.raises(QueryError, match="no such table"):
        db_query("SELECT v FROM t", str(decoy))


def test_big_results_are_refused_as_they_are_fetched(tmp_path: Path) -> None:
    big = data_dir("bigrows") / "big.db"
    big.unlink(missing_ok=True)
    with sqlite3.connect(big) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * (1 << 20),)] * 12)
    with pytest.raises(QueryError, match="result over"):
        db_query("SELECT v FROM t", str(big), max_rows=12)
    assert db_query("SELECT length(v) AS n FROM t", str(big), max_rows=2)["count"] == 2
    with pytest.raises(ValueError, match="max_rows must be within"):
        db_query("SELECT 1", str(big), max_rows=1_000_000)
