"""Live fleet state: which workers serve which class, and how deep each class's queue is.

Workers announce themselves with a heartbeat (see ``workers.heartbeat``) into Redis sorted
sets, one per class, scored by the time of the last beat. Readers take everything in one
pipelined round trip and cache it for ``state_ttl`` seconds, so a routing decision costs a dict
lookup, not a broker round trip.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from fleet.config import FleetConfig
from fleet.profiles import ONLINE_KEY

log = logging.getLogger("fleet.state")

WORKERS_KEY = "fleet:workers:{cls}"
INFO_KEY = "fleet:worker-info"
# kombu's Redis transport keeps priority levels in sub-lists "<queue>\x06\x16<p>".
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str
    classes: tuple[str, ...]
    concurrency: int
    pool: str
    pid: int
    last_seen: float
    busy: int = 0  # tasks executing or reserved (prefetched, not yet acknowledged)


@dataclass(frozen=True)
class FleetState:
    workers: dict[str, list[WorkerInfo]] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)  # messages waiting in the queue
    online: dict[str, float] = field(default_factory=dict)  # see fleet.profiles.OnlineStats
    fetched_at: float = 0.0
    stale: bool = False  # the last refresh failed: this is older news
    # Wait this router process expects on each class from the steps it sent itself (filled
    # in by FleetRouter): a burst inside one snapshot must not all pile onto one class.
    local_wait_s: dict[str, float] = field(default_factory=dict)

    def live(self, cls: str) -> bool:
        return bool(self.workers.get(cls))

    def slots(self, cls: str) -> int:
        return sum(w.concurrency for w in self.workers.get(cls, []))

    def busy(self, cls: str) -> int:
        return sum(w.busy for w in self.workers.get(cls, []))

    def backlog(self, cls: str) -> int:
        """Steps ahead of a new one on this class: queued, reserved and running."""
        return self.depth.get(cls, 0) + self.busy(cls)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)]


class StateReader:
    def __init__(self, cfg: FleetConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self._client = client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.cfg.backend_url, decode_responses=True)
        return self._client

    def read(self) -> FleetState:
        now = time.time()
        classes = list(self.cfg.classes.values())
        pipe = self.client.pipeline(transaction=False)
        for spec in classes:
            pipe.zrangebyscore(WORKERS_KEY.format(cls=spec.name), now - self.cfg.worker_ttl, "+inf")
        pipe.hgetall(INFO_KEY)
        pipe.hgetall(ONLINE_KEY)
        broker = self._broker_pipe(classes)
        results = pipe.execute()
        online = {k: float(v) for k, v in results[-1].items()}
        results = results[:-1]
        info: dict[str, str] = results[-1]
        workers: dict[str, list[WorkerInfo]] = {}
        for spec, hosts in zip(classes, results[:-1], strict=True):
            workers[spec.name] = [_worker(h, info.get(h)) for h in hosts]
        depth = {}
        if broker is not None:
            raw = broker.execute()
            n = len(PRIORITY_STEPS) + 1
            for i, spec in enumerate(classes):
                depth[spec.name] = int(sum(raw[i * n : (i + 1) * n]))
        return FleetState(workers=workers, depth=depth, online=online, fetched_at=now)

    def _broker_pipe(self, classes: list[Any]) -> Any:
        """LLEN of every class queue, when the broker is Redis (else depth stays unknown)."""
        if not self.cfg.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return None
        client = (
            self.client
            if self.cfg.broker_url == self.cfg.backend_url
            else redis.Redis.from_url(self.cfg.broker_url)
        )
        pipe = client.pipeline(transaction=False)
        for spec in classes:
            for key in queue_keys(spec.queue_name):
                pipe.llen(key)
        return pipe


def _worker(hostname: str, raw: str | None) -> WorkerInfo:
    data: dict[str, Any] = json.loads(raw) if raw else {}
    return WorkerInfo(
        hostname=hostname,
        classes=tuple(data.get("classes", ())),
        concurrency=int(data.get("concurrency", 1)),
        pool=str(data.get("pool", "")),
        pid=int(data.get("pid", 0)),
        last_seen=float(data.get("last_seen", 0.0)),
        busy=int(data.get("busy", 0)),
    )


class CachedState:
    """A FleetState refreshed at most every ``ttl`` seconds; safe to share between threads."""

    def __init__(self, reader: StateReader, ttl: float) -> None:
        self.reader = reader
        self.ttl = ttl
        self._state: FleetState | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def _fresh(self) -> bool:
        return self._state is not None and time.monotonic() - self._read_at < self.ttl

    def get(self) -> FleetState:
        if not self._fresh():
            with self._lock:
                if not self._fresh():
                    self._refresh()
        assert self._state is not None
        return self._state

    def _refresh(self) -> None:
        try:
            self._state = self.reader.read()
        except redis.RedisError as exc:
            # Keep routing on what we last knew (marked stale) rather than failing sends.
            log.warning("fleet state refresh failed: %s", exc)
            old = self._state or FleetState()
            self._state = replace(old, stale=True)
        self._read_at = time.monotonic()


def beat(
    client: redis.Redis, hostname: str, classes: list[str], details: dict[str, Any], ttl: float
) -> None:
    """Announce a live worker for each of its classes (called by the worker's heartbeat)."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for cls in classes:
        key = WORKERS_KEY.format(cls=cls)
        pipe.zadd(key, {hostname: now})
        pipe.zremrangebyscore(key, "-inf", now - 6 * ttl)
    pipe.hset(INFO_KEY, hostname, json.dumps({**details, "classes": classes, "last_seen": now}))
    pipe.execute()


def forget(client: redis.Redis, hostname: str, classes: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for cls in classes:
        pipe.zrem(WORKERS_KEY.format(cls=cls), hostname)
    pipe.hdel(INFO_KEY, hostname)
    pipe.execute()
