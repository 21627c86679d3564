"""Put back the messages that no live worker holds: the sweeper for Redis's ``unacked`` hash.

With acks_late, a message a worker has taken sits in the broker's ``unacked`` hash until the
worker acknowledges it. If the worker's main process is killed (or it loses the broker in a
restart and forgets what it held), nobody acknowledges it, and kombu gives it back only after
``visibility_timeout`` -- an hour by default. Every live worker announces, with its
heartbeat, the task ids it holds (reserved or running); the sweeper, run by one worker at a
time, restores (through kombu, atomically) the messages older than a grace period that no
live worker holds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from fleet.constants import AMQP_SCHEMES, SWEEP_LOCK_KEY, WORKER_INFO_KEY
from fleet.messaging.app import fleet_config

log = logging.getLogger("fleet.sweeper")


def held_by_live_workers(client: redis.Redis, now: float, worker_ttl: float) -> set[str] | None:
    """Task ids held by workers seen within ``worker_ttl``; None if a live worker did not
    say (an older worker): then nothing can be judged stranded."""
    held: set[str] = set()
    for raw in client.hvals(WORKER_INFO_KEY):
        info = json.loads(raw)
        if now - float(info.get("last_seen", 0)) > worker_ttl:
            continue
        if "held" not in info:
            return None
        held.update(info["held"])
    return held


def stranded(
    unacked: dict[str, Any], index: Iterable[tuple[str, float]], held: set[str], older_than: float
) -> list[str]:
    """Delivery tags of messages taken before ``older_than`` whose task no live worker holds."""
    since = dict(index)
    tags = []
    for tag, raw in unacked.items():
        if since.get(tag, 0.0) > older_than:
            continue  # just delivered: its worker may not have announced it yet
        try:
            message = json.loads(raw)[0]
            task_id = message["headers"]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not a Celery message: not ours to judge
        if task_id not in held:
            tags.append(tag)
    return tags


def take_turn(backend: redis.Redis, grace_s: float) -> bool:
    """Whether this worker sweeps now: one sweeper at a time (a Redis lock, one period)."""
    return bool(backend.set(SWEEP_LOCK_KEY, "1", nx=True, ex=max(1, int(grace_s))))


def sweep(app: Celery, backend: redis.Redis, worker_ttl: float, grace_s: float) -> int:
    """Restore stranded messages; returns how many. The caller took its turn (take_turn).
    A RabbitMQ broker has no ``unacked`` hash: it gives back itself what a closed channel
    held, so there is nothing to sweep (and the orphan check after the sweep still runs)."""
    if fleet_config(app).broker_url.startswith(AMQP_SCHEMES):
        return 0
    now = time.time()
    held = held_by_live_workers(backend, now, worker_ttl)
    if held is None:
        return 0
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        with conn.default_channel.conn_or_acquire() as broker:
            unacked = broker.hgetall(qos.unacked_key)
            index = broker.zrange(qos.unacked_index_key, 0, -1, withscores=True)
        decoded = {_s(k): _s(v) for k, v in unacked.items()}
        tags = stranded(decoded, ((_s(t), float(s)) for t, s in index), held, now - grace_s)
        for tag in tags:
            qos.restore_by_tag(tag, leftmost=True)  # atomic: skipped if acked meanwhile
    if tags:
        log.warning("sweeper: restored %d message(s) no live worker held", len(tags))
    return len(tags)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
