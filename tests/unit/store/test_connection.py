"""The stores' Redis clients (fleet/store/connection.py) on a real Redis: a process with
more threads than connections waits for one instead of failing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from fleet.config import load_config
from fleet.store.connection import connect
from fleet.store.runs import RunStore


def _hold(client: redis.Redis, key: str) -> int:
    client.blpop([key], timeout=0.2)  # keeps its connection for 0.2 s, as a slow reply would
    return 1


def test_more_threads_than_connections_wait_for_one(redis_url: str) -> None:
    client = connect(redis_url, max_connections=4)
    with ThreadPoolExecutor(24) as pool:
        done = list(pool.map(lambda i: _hold(client, f"conn-test-{i}"), range(24)))
    assert sum(done) == 24
    assert len(client.connection_pool._connections) <= 4  # type: ignore[attr-defined]


def test_redis_pys_own_default_pool_refused_them(redis_url: str) -> None:
    """What the stores used before: the 5th thread at once failed on its bookkeeping."""
    client = redis.Redis.from_url(redis_url, max_connections=4)
    with ThreadPoolExecutor(24) as pool, pytest.raises(redis.exceptions.MaxConnectionsError):
        list(pool.map(lambda i: _hold(client, f"conn-test-{i}"), range(24)))


def test_the_run_store_pool_is_the_configured_size(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_REDIS_MAX_CONNECTIONS", "7")
    cfg = load_config()
    assert cfg.redis_max_connections == 7
    store = RunStore(redis_url, max_connections=cfg.redis_max_connections)
    assert isinstance(store.redis.connection_pool, redis.BlockingConnectionPool)
    assert store.redis.connection_pool.max_connections == 7
