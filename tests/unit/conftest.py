"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the tests' Redis server (the run store's database), replies as text."""
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()
