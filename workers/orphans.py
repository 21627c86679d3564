"""Re-send the steps a broker lost: the orphan check, run with the sweeper.

Kombu's Redis transport takes a message off its queue (BRPOP) before it records it as unacked,
so a Redis restart between the two loses that message: its step was claimed, so no other task
will send it, and its run waits forever. The sweeper puts back what sits unacked with no live
holder; this puts back what is *nowhere*. For each running engine run older than
``orphan_after_s`` (30 s: runs that young are almost never stuck, and the check reads whole
queues), the steps its state makes ready are looked for in every class queue, in the unacked
hash, in live workers' own queues and in what live workers announce they hold. One that
is in none of them twice in a row, a grace period apart, is an orphan: it is sent again --
once per step (a second loss of the same step is left to the run's deadline). A step whose
outputs are recorded is never ready, so nothing that ran is sent again; and a re-sent step
that finds its outputs recorded (the lost message came back after all) does not run its op
(see ``workers.recovery``).

Only a Redis broker can be looked into this way; a RabbitMQ broker takes and records in one
step, so nothing is lost there between the two. On both, the check first routes again the
steps that wait in a gone worker's own queue (workers.direct).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from fleet.constants import (
    ACTIVE_RUNS_KEY,
    AMQP_SCHEMES,
    CANVAS_FINISH_TASK,
    CANVAS_START_TASK,
    CELERY_DONE_TASK,
    CELERY_FAILED_TASK,
    CELERY_RUN_HEADER,
    CELERY_STEP_HEADER,
    NODE_TASK,
    ORPHANS_SENT_KEY,
    STEP_TASK,
    WORKER_INFO_KEY,
)
from fleet.engine.dispatch import Dispatcher
from fleet.engine.readiness import decide
from fleet.errors import FleetError
from fleet.routing.affinity import DIRECT_QUEUE
from workers import canvas_orphans
from workers.direct import drain_gone
from workers.runtime import runtime
from workers.suspects import lost

log = logging.getLogger("fleet.orphans")
Step = tuple[str, str]  # (run id, node path)
# the fleet's messages whose kwargs carry a step (call, run): the step itself, and the end of
# a `celery:` step on its way to be recorded (its task is done, its outputs not yet written)
CARRY_STEPS = (STEP_TASK, CELERY_DONE_TASK, CELERY_FAILED_TASK, NODE_TASK)
# a canvas's own tasks that carry its run but no step (workers.canvas_orphans): (run, "")
CARRY_RUNS = (CANVAS_START_TASK, CANVAS_FINISH_TASK)


def step_of(message: Any) -> Step | None:
    """The (run, path) a kombu Redis message of ``fleet.step`` carries, or a ``celery:``
    step's message (its headers name them) or the link that records its end, else None."""
    try:
        headers = message["headers"]
        if headers.get(CELERY_STEP_HEADER) and headers.get(CELERY_RUN_HEADER):
            return str(headers[CELERY_RUN_HEADER]), str(headers[CELERY_STEP_HEADER])
        if headers["task"] not in CARRY_STEPS + CARRY_RUNS:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        if headers["task"] in CARRY_RUNS:
            return str(kwargs["run"]["id"]), ""
        return str(kwargs["run"]["id"]), str(kwargs["call"]["path"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def in_flight(broker: redis.Redis, queues: Iterable[str], unacked_key: str) -> set[Step]:
    """Every step with a message somewhere: queued (at any priority), unacked, or held by a
    live worker. Read in the order a message travels, so one moving is seen at least once."""
    found: set[Step] = set()
    for queue in queues:
        names = [queue, *(k for k in broker.scan_iter(match=f"{queue}\x06\x16*"))]
        for name in names:
            found.update(s for raw in broker.lrange(name, 0, -1) if (s := _step(raw)))
    found.update(s for raw in broker.hvals(unacked_key) if (s := _step(raw, unacked=True)))
    return found


def _step(raw: Any, unacked: bool = False) -> Step | None:
    try:
        message = json.loads(raw)
        return step_of(message[0] if unacked else message)
    except (ValueError, IndexError, TypeError, KeyError):
        return None


def live_workers(client: redis.Redis, now: float, worker_ttl: float) -> dict[str, Any]:
    """What each live worker last announced (hostname -> its heartbeat's details)."""
    found = {}
    for host, raw in client.hgetall(WORKER_INFO_KEY).items():
        info = json.loads(raw)
        if now - float(info.get("last_seen", 0)) <= worker_ttl:
            found[str(host)] = info
    return found


def held_steps(live: dict[str, Any]) -> set[Step]:
    """Steps live workers announce they hold (received, running, or waiting for an ETA)."""
    return {(str(r), str(p)) for info in live.values() for r, p in info.get("steps", ())}


def check(app: Celery, client: redis.Redis, worker_ttl: float, grace_s: float) -> int:
    """Look for orphans once (the caller holds the sweep lock); returns how many were sent.
    First the steps waiting for a gone worker in its own queue are routed again."""
    engine = runtime(app).engine
    cfg = engine.cfg
    now = time.time()
    live = live_workers(client, now, worker_ttl)
    moved = drain_gone(app, client, engine, set(live))
    if cfg.broker_url.startswith(AMQP_SCHEMES):
        return moved
    older = max(grace_s, app.fleet_config.orphan_after_s)
    runs = [str(r) for r in client.zrangebyscore(ACTIVE_RUNS_KEY, "-inf", now - older)]
    canvases = canvas_orphans.watched(client, now - older)
    if not runs and not canvases:
        return moved
    queues = [q for spec in cfg.classes.values() for q in spec.queues]
    queues += [DIRECT_QUEUE.format(worker=host) for host in live]
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        with conn.default_channel.conn_or_acquire() as broker:
            seen = in_flight(broker, queues, qos.unacked_key)
    seen |= held_steps(live)
    sent = moved
    for run_id in runs:
        sent += _check_run(engine, client, run_id, seen, now, grace_s)
    seen_runs = {run_id for run_id, _ in seen}
    return sent + canvas_orphans.check(app, engine, client, canvases, seen_runs, now, grace_s)


def _check_run(
    engine: Dispatcher,
    client: redis.Redis,
    run_id: str,
    seen: set[Step],
    now: float,
    grace_s: float,
) -> int:
    run = engine.store.run_message(run_id)
    if run is None:  # ended, or expired: no longer watched
        client.zrem(ACTIVE_RUNS_KEY, run_id)
        return 0
    try:
        decision = decide(engine.workflow(run["spec"]), engine.store.state(run_id))
    except FleetError as exc:
        log.warning("orphan check: run %s: %s", run_id, exc)
        return 0
    sent = 0
    parked = {w.path for w in engine.waits.waits(run_id)}  # held by the run store
    for call in decision.ready:
        key = f"{run_id}|{call['path']}"
        found = (run_id, call["path"]) in seen or call["path"] in parked
        if not lost(client, key, found, now, grace_s):
            continue
        if not client.hsetnx(ORPHANS_SENT_KEY, key, repr(now)):
            continue  # sent again once already
        client.expire(ORPHANS_SENT_KEY, engine.store.ttl)
        log.warning("run %s: step %s has no message anywhere: sent again", run_id, call["path"])
        engine.send(call, run)
        sent += 1
    return sent
