"""Work-arounds for bugs in the libraries under the fleet, each with the issue it works around.

kombu's Redis channel rebuilds its connection parameters from ``transport.client``; after a
broker restart the worker's consumer closes the old connection, the channel's ``close()``
restores its unacknowledged messages -- and by then ``transport.client`` is None, so it dies
with ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (kombu#970, #582),
killing the worker and leaving its prefetched messages stranded until visibility_timeout.
The channel here remembers the connection info it was made with and uses it in that case.
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_fleet_patched"


def patch_kombu_redis_restore() -> None:
    from kombu.transport import redis as transport

    channel: Any = transport.Channel  # patched in place: typed as Any on purpose
    if getattr(channel, _PATCHED, False):
        return
    original_init = channel.__init__
    original_connparams = channel._connparams

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Remembered before the original init, which may already connect.
        self._fleet_conninfo = getattr(args[0] if args else kwargs["connection"], "client", None)
        original_init(self, *args, **kwargs)

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        conn = self.connection
        remembered = getattr(self, "_fleet_conninfo", None)
        if conn.client is None and remembered is not None:
            conn.client = remembered  # only for the duration of this call
            try:
                return original_connparams(self, asynchronous=asynchronous)
            finally:
                conn.client = None
        return original_connparams(self, asynchronous=asynchronous)

    channel.__init__ = __init__
    channel._connparams = _connparams
    setattr(channel, _PATCHED, True)


def patch_thread_pool_flush() -> None:
    """When a worker loses its broker connection, Celery's consumer drops the messages it had
    taken but not started -- the broker gives them out again -- and asks the pool to
    ``flush()`` its own copies. The thread pool's ``flush`` does nothing, so the tasks already
    queued in its executor still run after the reconnection, while their redelivered copies
    run too: the same step twice, at once. Here the thread pool cancels the queued futures
    that have not started (a running one is not stopped; its step finishes and records)."""
    from celery.concurrency import thread

    pool: Any = thread.TaskPool  # patched in place: typed as Any on purpose
    if getattr(pool, _PATCHED, False):
        return
    original_apply = pool.on_apply

    def on_apply(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_apply(self, *args, **kwargs)
        pending: set[Any] = self.__dict__.setdefault("_fleet_pending", set())
        pending.add(result.f)
        result.f.add_done_callback(pending.discard)
        return result

    def flush(self: Any) -> None:
        for future in list(getattr(self, "_fleet_pending", ())):
            future.cancel()  # False for one already running: it goes on

    pool.on_apply = on_apply
    pool.flush = flush
    setattr(pool, _PATCHED, True)
