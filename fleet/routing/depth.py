"""How many messages wait in each class's queue, read from the broker itself.

Redis: ``LLEN`` of the queue and of kombu's priority sub-lists, one pipelined round trip.
RabbitMQ: a passive ``queue.declare`` per queue, whose reply carries the ready-message count
(messages delivered to a worker but not yet acknowledged are not in it; the workers' heartbeats
count those as busy). Both are read at most once per state refresh (``state_ttl``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

import redis

from fleet.config import redact
from fleet.constants import AMQP_SCHEMES
from fleet.store.connection import connect

log = logging.getLogger("fleet.routing.depth")

# kombu's Redis transport keeps priority levels in sub-lists "<queue>\x06\x16<p>".
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class DepthReader(Protocol):
    def read(self, queues: list[str]) -> dict[str, int]:
        """Messages waiting per queue name; a queue it cannot read is left out (unknown)."""
        ...


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)]


class RedisDepth:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def read(self, queues: list[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        raw = pipe.execute()
        n = len(PRIORITY_STEPS) + 1
        return {q: int(sum(raw[i * n : (i + 1) * n])) for i, q in enumerate(queues)}


def amqp_connection(url: str, timeout: float) -> Any:
    """A kombu connection (not yet connected) to an AMQP broker."""
    from kombu.connection import Connection

    connect: Any = Connection  # kombu is untyped
    return connect(url, connect_timeout=timeout)


class AmqpDepth:
    """One AMQP connection per reader, opened on first use and reopened after an error."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: Any = None
        self._channel: Any = None

    def _open(self) -> Any:
        if self._conn is None:
            self._conn = amqp_connection(self.url, self.timeout)
        if self._channel is None:
            self._channel = self._conn.channel()
        return self._channel

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to keep
                conn.release()

    def read(self, queues: list[str]) -> dict[str, int]:
        from amqp.exceptions import NotFound  # type: ignore[import-untyped]

        depth: dict[str, int] = {}
        try:
            for queue in queues:
                try:
                    ok = self._open().queue_declare(queue=queue, passive=True)
                except NotFound:  # not declared yet: nothing was ever sent or consumed
                    self._channel = None  # the server closed the channel with the error
                    depth[queue] = 0
                    continue
                depth[queue] = int(ok.message_count)
        except Exception as exc:
            log.warning("cannot read queue depth from %s: %s", redact(self.url), exc)
            self.close()
        return depth


def depth_reader(
    broker_url: str, backend: redis.Redis | None, backend_url: str
) -> DepthReader | None:
    """The reader for this broker, or None where depth cannot be read (it shows as '?')."""
    if broker_url.startswith(REDIS_SCHEMES):
        if broker_url == backend_url and backend is not None:
            return RedisDepth(backend)
        return RedisDepth(connect(broker_url))
    if broker_url.startswith(AMQP_SCHEMES):
        return AmqpDepth(broker_url)
    return None
