"""What waits on a Redis broker's queues: the step messages of a run, read as a worker would."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis


def message_body(message: dict[str, Any]) -> Any:
    """The decoded body of a kombu Redis message (an envelope read with ``json.loads``):
    the fleet's transport sends a JSON body as it is, kombu's base64-encodes it."""
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


def queued_messages(url: str, queue: str) -> list[dict[str, Any]]:
    """The ``fleet.step`` keyword arguments (call, run) of every message on ``queue`` (its
    priority lists included)."""
    client = redis.Redis.from_url(url)
    found = []
    for key in client.scan_iter(match=f"{queue}*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            found.append(message_body(json.loads(raw))[1])
    return found


def queued_steps(url: str, run_id: str, queue: str = "cpu") -> list[str]:
    """The nodes of run ``run_id`` whose step messages wait on ``queue``, sorted."""
    return sorted(
        m["call"]["path"] for m in queued_messages(url, queue) if m["run"]["id"] == run_id
    )
