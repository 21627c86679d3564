"""Redis clients for the fleet's stores: one bounded pool per client, shared by its threads.

redis-py's default pool refuses the 101st connection at once (``MaxConnectionsError``). An
io worker runs a thousand steps in threads, and each step makes a few round trips: at a
burst more than a hundred are in flight together, and steps failed on their bookkeeping,
not on their work. A blocking pool makes a thread that finds every connection in use wait
for one (up to ``POOL_WAIT_S``) instead, and keeps the connections one process opens to
Redis bounded (``redis_max_connections``), however many threads it runs.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

MAX_CONNECTIONS = 256  # per client (process), the default of ``redis_max_connections``
POOL_WAIT_S = 30.0  # how long a thread waits for a free connection before it fails


def connect(
    url: str,
    *,
    max_connections: int = MAX_CONNECTIONS,
    decode_responses: bool = False,
    ride_out_restarts: bool = False,
) -> redis.Redis:
    """A client of ``url`` over a blocking pool of at most ``max_connections``.

    ``ride_out_restarts``: a command that finds Redis away is tried again for about 13 s (a
    broker restart), instead of failing the step or submission whose bookkeeping hit it."""
    extra: dict[str, object] = {}
    if ride_out_restarts:
        extra["retry"] = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=10)
        extra["retry_on_error"] = [redis.ConnectionError, redis.TimeoutError]
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        decode_responses=decode_responses,
        **extra,
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client
