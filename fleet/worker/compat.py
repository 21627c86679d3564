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
