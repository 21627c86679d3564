"""The fleet's Redis broker transport: kombu's, with one client per channel, not per publish.

kombu's Redis channel builds a new ``redis.Redis`` for every message it publishes and every
event it fans out (``Channel.conn_or_acquire``). With redis-py 8 that costs about 0.2 ms of
CPU each (the client fills a table of about 170 reply callbacks): a submission publishes
twice (the step and its ``task-sent`` event), a step's worker three to four times (its task
events and the next steps). This channel keeps the client and reuses it while the channel's
connection pool is the same; a client is only a handle on that pool (it holds no
connection), and redis-py clients are safe to share between threads. And its pool waits for
a free connection where kombu's fails (:meth:`Channel._get_pool`).

Only the fleet's own Celery app uses it (``broker_transport``), on ``redis://`` brokers: a
user's app keeps kombu's, and so do ``rediss://`` and RabbitMQ. Everything else -- the
messages, the queues, the fanout of events, acknowledgement and restore -- is kombu's,
unchanged; its connections still call themselves ``redis://`` (:class:`Connection`: Flower
reads the broker's address from there).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis

from fleet.store.connection import POOL_WAIT_S


class Channel(kombu_redis.Channel):
    _fleet_client: Any = None

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """kombu's pool for the channel's commands (publish, ack, restore), made to wait for a
        free connection instead of failing: a thread-pool worker acknowledges each message
        from the thread that ran it, and more than ``max_connections`` (10) acknowledging
        at once failed with ``MaxConnectionsError`` -- the message stayed unacknowledged
        until the broker gave it out again."""
        pool = super()._get_pool(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        if asynchronous:
            return pool
        return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=pool.max_connections,
            timeout=POOL_WAIT_S,
            connection_class=pool.connection_class,
            **pool.connection_kwargs,
        )

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._fleet_client
        if client is None or client.connection_pool is not pool:
            client = self._fleet_client = super()._create_client(False)  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


class Connection(kombu_connection.Connection):
    """kombu's connection, naming this transport ``redis`` in its URL and info (kombu would
    write the class there)."""

    # kombu resolves by the transport it was given, a name or (here) a class
    resolve_aliases = {**kombu_connection.resolve_aliases, Transport: "redis"}  # type: ignore[dict-item]


def transport_for(broker_url: str) -> type[Transport] | None:
    """The transport class for ``broker_url``: this one for ``redis://``, kombu's own (None)
    for anything else."""
    return Transport if broker_url.partition("://")[0].lower() == "redis" else None
