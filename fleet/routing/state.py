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

from fleet.config import ClassSpec, FleetConfig
from fleet.constants import DIRECT_WORKERS_KEY, WORKERS_KEY
from fleet.constants import ONLINE_PROFILE_KEY as ONLINE_KEY
from fleet.constants import WORKER_INFO_KEY as INFO_KEY
from fleet.routing.depth import DepthReader, depth_reader
from fleet.store.connection import connect

log = logging.getLogger("fleet.routing.state")


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str
    classes: tuple[str, ...]
    concurrency: int
    pool: str
    pid: int
    last_seen: float
    busy: int = 0  # tasks executing or reserved (prefetched, not yet acknowledged)
    # model ops its processes hold (op -> processes) and how long a process's first step of
    # each took (op -> s: the model load, imports and caches on top of the service time)
    warm: dict[str, int] = field(default_factory=dict)
    cold: dict[str, float] = field(default_factory=dict)
    tasks: frozenset[str] = frozenset()  # the plain Celery tasks it has (`celery:` steps)

    @property
    def processes(self) -> int:
        """Processes that run its steps: a prefork pool's children, else the one process."""
        return self.concurrency if self.pool == "prefork" else 1


@dataclass(frozen=True)
class FleetState:
    workers: dict[str, list[WorkerInfo]] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)  # messages waiting in the queue
    online: dict[str, float] = field(default_factory=dict)  # see fleet.routing.online
    fetched_at: float = 0.0
    stale: bool = False  # the last refresh failed: this is older news
    # When this router process expects a slot of each class to free up, from the steps it
    # sent itself since this snapshot (epoch seconds; kept up to date by FleetRouter): a
    # burst inside one snapshot must not all pile onto one class.
    local_free_at: dict[str, float] = field(default_factory=dict)
    # What routing policies derive from this snapshot, per (op, class): see policies._model.
    models: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    # Per-class sums, computed once per snapshot: every routing decision reads them.
    _slots: dict[str, int] = field(init=False, repr=False, compare=False)
    _busy: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slots = {c: sum(w.concurrency for w in ws) for c, ws in self.workers.items()}
        busy = {c: sum(w.busy for w in ws) for c, ws in self.workers.items()}
        object.__setattr__(self, "_slots", slots)
        object.__setattr__(self, "_busy", busy)

    def live(self, cls: str) -> bool:
        return bool(self.workers.get(cls))

    def slots(self, cls: str) -> int:
        return self._slots.get(cls, 0)

    def busy(self, cls: str) -> int:
        return self._busy.get(cls, 0)

    def cold_start(self, cls: str, op: str) -> tuple[float, float]:
        """(the share of ``cls``'s processes that have not run ``op`` yet, how long a
        process's first step of it took): measured on this class's workers, else on any
        class's; (0, 0) while no process has run it (nothing known to charge)."""
        workers = self.workers.get(cls, [])
        procs = sum(w.processes for w in workers)
        warm = sum(min(w.warm.get(op, 0), w.processes) for w in workers)
        costs = [w.cold[op] for w in workers if w.cold.get(op, 0.0) > 0]
        if not costs:
            costs = [
                c for ws in self.workers.values() for w in ws if (c := w.cold.get(op, 0.0)) > 0
            ]
        if not procs or not costs:
            return 0.0, 0.0
        return 1.0 - warm / procs, max(costs)

    def backlog(self, cls: str) -> int:
        """Steps ahead of a new one on this class: queued, reserved and running."""
        return self.depth.get(cls, 0) + self._busy.get(cls, 0)


class StateReader:
    def __init__(self, cfg: FleetConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self._client = client
        self._depth: DepthReader | None = None
        self._depth_made = False

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(
                self.cfg.backend_url,
                max_connections=self.cfg.redis_max_connections,
                decode_responses=True,
            )
        return self._client

    def read(self) -> FleetState:
        now = time.time()
        classes = list(self.cfg.classes.values())
        pipe = self.client.pipeline(transaction=False)
        for spec in classes:
            pipe.zrangebyscore(WORKERS_KEY.format(cls=spec.name), now - self.cfg.worker_ttl, "+inf")
        pipe.hgetall(INFO_KEY)
        pipe.hgetall(ONLINE_KEY)
        results = pipe.execute()
        online = {k: float(v) for k, v in results[-1].items()}
        results = results[:-1]
        info: dict[str, str] = results[-1]
        workers: dict[str, list[WorkerInfo]] = {}
        for spec, hosts in zip(classes, results[:-1], strict=True):
            workers[spec.name] = [_worker(h, info.get(h)) for h in hosts]
        reader = self.depth_reader()
        queues = [q for spec in classes for q in spec.queues]
        depth: dict[str, int] = {}
        if reader is not None:
            depth = class_depth(classes, reader.read(queues))
        return FleetState(workers=workers, depth=depth, online=online, fetched_at=now)

    def depth_reader(self) -> DepthReader | None:
        """Made once per reader: one broker connection, not one per refresh."""
        if not self._depth_made:
            self._depth = depth_reader(self.cfg.broker_url, self.client, self.cfg.backend_url)
            self._depth_made = True
        return self._depth


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
        warm={str(k): int(v) for k, v in (data.get("warm") or {}).items()},
        cold={str(k): float(v) for k, v in (data.get("cold") or {}).items()},
        tasks=frozenset(str(t) for t in data.get("tasks") or ()),
    )


def class_depth(classes: list[ClassSpec], by_queue: dict[str, int]) -> dict[str, int]:
    """Messages waiting per class: in all its queues (a GPU class with lanes has one per
    runtime); a class with a queue that could not be read is left out (unknown)."""
    return {
        s.name: sum(by_queue[q] for q in s.queues)
        for s in classes
        if all(q in by_queue for q in s.queues)
    }


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
    client: redis.Redis,
    hostname: str,
    classes: list[str],
    details: dict[str, Any],
    ttl: float,
    direct: bool = False,
) -> None:
    """Announce a live worker for each of its classes (called by the worker's heartbeat);
    ``direct``: it consumes a queue of its own too (workers.direct watches it)."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    if direct:
        pipe.sadd(DIRECT_WORKERS_KEY, hostname)
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
