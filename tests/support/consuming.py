"""Taking a message off its queue as a worker's consumer takes it (kombu's
``basic_consume``): recorded in the transport's unacknowledged record, not yet acknowledged."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from kombu import Message


def take(channel: Any, queue: str, timeout: float = 5.0) -> Message:
    """The next message of ``queue``, through ``channel`` (a worker's)."""
    got: list[Message] = []
    channel.basic_consume(queue, False, got.append, queue)
    try:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(socket.timeout):
                channel.connection.client.drain_events(timeout=0.5)
    finally:
        channel.basic_cancel(queue)
    assert got, f"no message arrived on {queue}"
    return got[0]
