"""The run record in Redis: status, result, error and the per-step trace of each workflow run.

The client reads it (``RunHandle.get/status/trace``); steps write it as they finish. It is
independent of Celery's per-task results, so it survives the canvas being extended at run time.

Keys (all expire after ``run_ttl``): ``fleet:run:<id>`` (hash), ``fleet:run:<id>:trace``
(list of JSON step records), ``fleet:run:<id>:done`` (list pushed once, for blocking waits).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

TERMINAL = ("succeeded", "failed")


@dataclass(frozen=True)
class TraceEntry:
    """One step of a run: where it went, why, and how long it waited and ran."""

    node: str
    op: str
    kind: str
    cls: str | None
    queue: str | None
    worker: str | None
    status: str
    sent_at: float | None
    started_at: float
    ended_at: float
    attempt: int = 0
    route: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rss_mb: float | None = None  # the worker process's peak memory so far

    @property
    def wait_s(self) -> float | None:
        return None if self.sent_at is None else max(0.0, self.started_at - self.sent_at)

    @property
    def run_s(self) -> float:
        return self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "kind": self.kind,
            "class": self.cls,
            "queue": self.queue,
            "worker": self.worker,
            "status": self.status,
            "sent_at": self.sent_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "wait_s": self.wait_s,
            "run_s": self.run_s,
            "attempt": self.attempt,
            "route": self.route,
            "error": self.error,
            "rss_mb": self.rss_mb,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceEntry:
        return cls(
            node=d["node"],
            op=d["op"],
            kind=d["kind"],
            cls=d.get("class"),
            queue=d.get("queue"),
            worker=d.get("worker"),
            status=d["status"],
            sent_at=d.get("sent_at"),
            started_at=d["started_at"],
            ended_at=d["ended_at"],
            attempt=d.get("attempt", 0),
            route=d.get("route") or {},
            error=d.get("error"),
            rss_mb=d.get("rss_mb"),
        )


@dataclass(frozen=True)
class RunInfo:
    id: str
    workflow: str
    status: str
    submitted_at: float | None
    finished_at: float | None
    outputs: dict[str, Any] | None
    error: str | None
    error_node: str | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class RunStore:
    def __init__(self, url: str, ttl: int = 86400) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.ttl = ttl

    @staticmethod
    def _key(run_id: str, part: str = "") -> str:
        return f"fleet:run:{run_id}{':' + part if part else ''}"

    def create(self, run_id: str, workflow: str, meta: dict[str, Any] | None = None) -> None:
        key = self._key(run_id)
        fields = {"workflow": workflow, "status": "running", "submitted_at": repr(time.time())}
        fields["meta"] = json.dumps(meta or {})
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=cast(Any, fields))
        pipe.expire(key, self.ttl)
        pipe.execute()

    def add_trace(self, run_id: str, entry: TraceEntry) -> None:
        key = self._key(run_id, "trace")
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(entry.to_dict()))
        pipe.expire(key, self.ttl)
        pipe.execute()

    def add_skips(self, run_id: str, paths: list[str]) -> None:
        """Trace the nodes a condition (or a skipped dependency) ruled out."""
        now = time.time()
        for path in paths:
            self.add_trace(
                run_id, TraceEntry(path, "", "", None, None, None, "skipped", None, now, now)
            )

    def _end(self, run_id: str, fields: dict[str, str]) -> bool:
        """Record a terminal state once; the first writer wins (a late branch cannot undo it)."""
        key = self._key(run_id)
        if not self.redis.hsetnx(key, "finished_at", repr(time.time())):
            return False
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=cast(Any, fields))
        pipe.rpush(self._key(run_id, "done"), "1")
        for k in (key, self._key(run_id, "done")):
            pipe.expire(k, self.ttl)
        pipe.execute()
        return True

    def succeed(self, run_id: str, outputs: dict[str, Any]) -> bool:
        return self._end(run_id, {"status": "succeeded", "outputs": json.dumps(outputs)})

    def fail(self, run_id: str, node: str | None, error: str) -> bool:
        return self._end(run_id, {"status": "failed", "error": error, "error_node": node or ""})

    def status(self, run_id: str) -> str | None:
        value = self.redis.hget(self._key(run_id), "status")
        return str(value) if value is not None else None

    def info(self, run_id: str) -> RunInfo | None:
        h = cast(dict[str, str], self.redis.hgetall(self._key(run_id)))
        if not h:
            return None
        return RunInfo(
            id=run_id,
            workflow=h.get("workflow", ""),
            status=h.get("status", "unknown"),
            submitted_at=float(h["submitted_at"]) if h.get("submitted_at") else None,
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
            outputs=json.loads(h["outputs"]) if h.get("outputs") else None,
            error=h.get("error") or None,
            error_node=h.get("error_node") or None,
        )

    def trace(self, run_id: str) -> list[TraceEntry]:
        raw = self.redis.lrange(self._key(run_id, "trace"), 0, -1)
        return [TraceEntry.from_dict(json.loads(r)) for r in raw]

    def wait(self, run_id: str, timeout: float | None) -> RunInfo | None:
        """Block until the run ends or ``timeout`` passes; returns the latest info."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info(run_id)
            if info is None or info.done:
                return info
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return info
            # BLPOP wakes us at once; re-push so that other waiters wake too.
            got = self.redis.blpop([self._key(run_id, "done")], timeout=min(left, 1.0))
            if got:
                self.redis.rpush(self._key(run_id, "done"), "1")
