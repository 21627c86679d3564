"""Consumer bootstep: announce this worker, its classes and its concurrency to the router.

It runs in the consumer blueprint after the task consumer, so a worker counts as live only
once it is really taking tasks, and it is withdrawn while the consumer reconnects. Classes
come from the queues the worker consumes, so a worker started the plain Celery way
(``celery -A fleet.messaging.app worker -Q gpu``) is seen as a ``gpu`` worker too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, cast

import redis
from celery import bootsteps

from fleet.constants import (
    BEGUN_HEADER,
    CANVAS_FINISH_TASK,
    CANVAS_START_TASK,
    CELERY_RUN_HEADER,
    CELERY_STEP_HEADER,
    TASK_PREFIX,
    THREADS_ENV,
    WAITS_DUE_KEY,
    WARM_KEY,
)
from fleet.engine.waits import release_due
from fleet.routing.state import beat, forget
from fleet.sdk.devices import detect_gpus
from workers.orphans import check as check_orphans
from workers.runtime import runtime
from workers.sweeper import sweep, take_turn

log = logging.getLogger("fleet.worker")


class Heartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.tref: Any = None
        self.classes: list[str] = []
        self.client: redis.Redis | None = None
        self.app: Any = None
        self.grace_s = 0.0
        self.next_sweep = 0.0
        self.orphans: threading.Thread | None = None
        self.releaser: threading.Thread | None = None
        self.pool: Any = None
        self.direct = False
        self.warm_key = ""

    def start(self, consumer: Any) -> None:
        worker = consumer.controller
        cfg = consumer.app.fleet_config
        queues = consumer.app.amqp.queues
        consumed = list((queues.consume_from or queues).keys())
        self.classes = list(cfg.classes_for_queues(consumed))
        if not self.classes:
            log.warning("worker %s consumes no fleet class queue (%s)", worker.hostname, consumed)
            return
        self.client = redis.Redis.from_url(cfg.backend_url, decode_responses=True)
        self.details = {
            "concurrency": worker.concurrency,
            "pool": getattr(worker.pool_cls, "__module__", str(worker.pool_cls)).split(".")[-1],
            "pid": os.getpid(),
            # native threads per process, as `fleet worker` set them for this host
            "threads": int(os.environ.get(THREADS_ENV) or 0) or None,
            # the plain Celery tasks it can run, for `celery:` steps (checked at submit)
            "tasks": sorted(
                name for name in consumer.app.tasks if not name.startswith(("celery.", TASK_PREFIX))
            ),
        }
        self.app = consumer.app
        self.direct = bool(consumer.app.conf.worker_direct)  # a queue of its own too
        self.pool = worker.pool
        self.warm_key = WARM_KEY.format(worker=worker.hostname)
        self.client.delete(self.warm_key)  # a new worker: its processes hold no model yet
        # A message a live worker took is in its next heartbeat; older ones nobody announced
        # are stranded (its worker died, or forgot them in a broker restart).
        self.grace_s = cfg.worker_ttl + 2 * cfg.heartbeat_interval
        self.next_sweep = time.monotonic() + self.grace_s
        self._beat(worker.hostname, cfg.worker_ttl)
        self.tref = consumer.timer.call_repeatedly(
            cfg.heartbeat_interval, self._beat, (worker.hostname, cfg.worker_ttl), priority=10
        )
        log.info(
            "fleet worker %s serves class(es) %s with concurrency %s",
            worker.hostname,
            ",".join(self.classes),
            worker.concurrency,
        )
        _say_cpu_fallback(cfg, self.classes, worker.hostname)

    def _beat(self, hostname: str, ttl: float) -> None:
        if self.client is None:
            return
        from celery.worker import state

        # Received and not yet done (running ones too): the sweeper leaves these alone. So
        # are messages waiting in this worker's timer for their ETA (a retry's countdown):
        # held, though not busy.
        taken = list(state.reserved_requests)
        waiting = list(state.scheduled_requests)
        held = [r.id for r in taken + waiting]
        details = {
            **self.details,
            "busy": len(taken),
            "held": held,
            "steps": _steps(taken + waiting),
            # the start leases it took as it received them, of the steps it holds still
            # (running ones too: a connection lost empties what is reserved)
            "received": _received(taken + waiting + list(state.active_requests)),
            "pids": self._pids(),  # its processes: a lapsed lease's holder among them stalled
        }
        try:
            with contextlib.suppress(ValueError, TypeError):  # the beat goes out regardless
                details.update(self._warmth())
            beat(self.client, hostname, self.classes, details, ttl, direct=self.direct)
            self._release_waits()
            if time.monotonic() >= self.next_sweep:
                self.next_sweep = time.monotonic() + self.grace_s
                if take_turn(self.client, self.grace_s):
                    sweep(self.app, self.client, ttl, self.grace_s)
                    self._look_for_orphans(ttl)
        except (redis.RedisError, OSError) as exc:  # the broker may be briefly away
            log.warning("heartbeat failed: %s", exc)
        except Exception as exc:  # the sweep must never take the worker down
            log.exception("sweeper failed: %s", exc)

    def _pids(self) -> list[int]:
        """This worker's process and its pool's children (workers.holders)."""
        info = getattr(self.pool, "info", None)
        alive = info.get("processes") if isinstance(info, dict) else None
        return [os.getpid(), *(int(p) for p in alive or [])]

    def _warmth(self) -> dict[str, Any]:
        """Which model ops this worker's processes hold ("warm": op -> processes) and how
        long a process's first step of each took ("cold": op -> seconds, the longest), from
        what its processes announced (workers.tasks.announce_warm); processes that have
        gone do not count as warm."""
        assert self.client is not None
        announced = cast(dict[str, str], self.client.hgetall(self.warm_key))
        info = getattr(self.pool, "info", None)
        alive = info.get("processes") if isinstance(info, dict) else None
        warm: dict[str, int] = {}
        cold: dict[str, float] = {}
        for field, seconds in announced.items():
            pid, _, op = field.partition("|")
            if alive is None or int(pid) in alive:
                warm[op] = warm.get(op, 0) + 1
            cold[op] = max(cold.get(op, 0.0), float(seconds))
        return {"warm": warm, "cold": cold}

    def _release_waits(self) -> None:
        """Parked runs whose wait has come to its end (a timer, a signal's timeout) go on:
        looked for every beat (one cheap read), ended in a thread of its own (each moves a
        run on), one at a time per worker; the script that ends a wait lets one worker do it."""
        client = self.client
        if client is None or (self.releaser is not None and self.releaser.is_alive()):
            return
        if not client.zrangebyscore(WAITS_DUE_KEY, "-inf", time.time(), start=0, num=1):
            return

        def release() -> None:
            try:
                release_due(runtime(self.app).engine)
            except Exception as exc:  # never take the worker down
                log.exception("releasing due waits failed: %s", exc)

        self.releaser = threading.Thread(target=release, name="fleet-waits", daemon=True)
        self.releaser.start()

    def _look_for_orphans(self, ttl: float) -> None:
        """The orphan check reads whole queues: in a thread of its own, one at a time, so
        the consumer's loop (this timer's thread) goes on taking tasks meanwhile."""
        client = self.client
        if client is None or (self.orphans is not None and self.orphans.is_alive()):
            return

        def look() -> None:
            try:
                check_orphans(self.app, client, ttl, self.grace_s)
            except Exception as exc:  # the check must never take the worker down
                log.exception("orphan check failed: %s", exc)

        self.orphans = threading.Thread(target=look, name="fleet-orphans", daemon=True)
        self.orphans.start()

    def stop(self, consumer: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):  # shutting down: the broker may be gone
                forget(self.client, consumer.hostname, self.classes)


def _say_cpu_fallback(cfg: Any, classes: list[str], hostname: str) -> None:
    """A class that binds to a GPU, served where none is usable, runs on the CPU: loudly."""
    gpu_classes = [c for c in classes if cfg.classes[c].device == "cuda"]
    if not gpu_classes:
        return
    report = detect_gpus()
    if not report.gpus:
        log.warning(
            "worker %s: class(es) %s bind to a GPU, but none is usable here (%s): "
            "running on the CPU",
            hostname,
            ",".join(gpu_classes),
            report.note,
        )


def _received(requests: list[Any]) -> list[str]:
    """The start leases the worker took as it received ``requests`` (workers.receipt): the
    unique part of each holder token, which :class:`workers.holders.Holders` looks for."""
    found = set()
    for request in requests:
        with contextlib.suppress(AttributeError, IndexError, TypeError):
            begun = request.request_dict.get(BEGUN_HEADER)
            if begun:
                found.add(str(begun[0]).rpartition("/")[2])
    return sorted(found)


def _steps(requests: list[Any]) -> list[tuple[str, str]]:
    """(run id, node path) of the fleet steps among held requests -- ``celery:`` steps too,
    named by their headers: the orphan check's view of what this worker has (a message
    acknowledged on receipt is in no broker list)."""
    found = []
    for request in requests:
        with contextlib.suppress(AttributeError, KeyError, TypeError):
            kwargs = request.kwargs or {}
            if "call" in kwargs and "run" in kwargs:
                found.append((str(kwargs["run"]["id"]), str(kwargs["call"]["path"])))
                continue
            if "run" in kwargs and request.name in (CANVAS_START_TASK, CANVAS_FINISH_TASK):
                found.append((str(kwargs["run"]["id"]), ""))  # a canvas's run, no step
                continue
            headers = request.request_dict
            if headers.get(CELERY_STEP_HEADER) and headers.get(CELERY_RUN_HEADER):
                found.append((str(headers[CELERY_RUN_HEADER]), str(headers[CELERY_STEP_HEADER])))
    return found
