"""Redis clients for the fleet's stores: one bounded pool per client, shared by its threads.

redis-py's default pool refuses the 101st connection at once (``MaxConnectionsError``). An
io worker runs a thousand steps in threads, and each step makes a few round trips: at a
burst more than a hundred are in flight together, and steps failed on their bookkeeping,
not on their work. A blocking pool makes a thread that finds every connection in use wait
for one (up to ``POOL_WAIT_S``) instead, and keeps the connections one process opens to
Redis bounded (``redis_max_connections``), however many threads it runs.

Each connection loads the stores' Lua scripts as it connects (:mod:`fleet.store.lua`), and
the client's pipelines load a script Redis lost and run it again (:class:`Pipeline`).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from fleet.store.lua import load, load_on_connect

MAX_CONNECTIONS = 256  # per client (process), the default of ``redis_max_connections``
POOL_WAIT_S = 30.0  # how long a thread waits for a free connection before it fails


class Pipeline(redis.client.Pipeline):
    """redis-py's, where a script Redis lost (``NOSCRIPT``: flushed while this connection
    stayed open) is loaded, and the pipeline runs again from the first command that found
    its script gone: the scripts that ran before are not run again, every other command
    after it is. The stores queue only reads and writes that may run twice (``HSET``,
    ``SADD``, ``ZREM`` ...) after a script, and the reads after a step's record read it
    (what ran in the first pass ran, though: there, a step's acknowledgement went before its
    record). A transaction is not run in two: its lost script raises (loaded, for the next
    try)."""

    def __init__(
        self, pool: redis.ConnectionPool, callbacks: Any, transaction: bool, hint: str | None
    ) -> None:
        super().__init__(pool, callbacks, transaction, hint)
        self.atomic = transaction

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack  # (execute's reset gives the pipeline a new list)
        results: list[Any] = super().execute(raise_on_error=False)
        lost = {i for i, r in enumerate(results) if isinstance(r, NoScriptError)}
        if lost:
            load(redis.Redis(connection_pool=self.connection_pool))
        if lost and not (self.atomic or self.explicit_transaction):
            again = [
                i
                for i in range(min(lost), len(stack))
                if i in lost or not _ran_script(stack[i], results[i])
            ]
            retry = redis.client.Pipeline(
                self.connection_pool, self.response_callbacks, False, self.shard_hint
            )
            for i in again:
                args, options = stack[i]
                retry.pipeline_execute_command(*args, **options)
            for i, result in zip(again, retry.execute(raise_on_error=False), strict=True):
                results[i] = result
        if raise_on_error:
            for i, result in enumerate(results):
                if isinstance(result, redis.ResponseError):
                    self.annotate_exception(result, i + 1, stack[i][0])  # type: ignore[no-untyped-call]
                if isinstance(result, Exception):
                    raise result
        return results


def _ran_script(command: tuple[Any, ...], result: Any) -> bool:
    """Whether ``command`` (a pipeline's: arguments, options) called a script that ran."""
    name = str(command[0][0]).upper()
    return name in ("EVALSHA", "EVAL") and not isinstance(result, NoScriptError)


class Client(redis.Redis):
    """A store's Redis client: redis-py's, with :class:`Pipeline` for its pipelines."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


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
        redis_connect_func=load_on_connect,
        **extra,
    )
    client = Client(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client
