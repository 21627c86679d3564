"""Canvas runs in the orphan check: a canvas whose message the broker lost fails, not hangs.

A workflow compiled to a canvas (``to_canvas``) is carried by Celery's own messages: each
task's message holds the rest of the chain, and a chord's body waits in the result backend
for its header. A message lost in a broker restart (:mod:`workers.orphans`) takes the rest of
the canvas with it, so it cannot be sent again as an engine run's step is: no copy of the
remainder exists (a user's tasks chained after the canvas included). What can be done
soundly is to stop the wait: ``fleet.canvas_start`` records the run here with the id of its
``fleet.canvas_finish`` task (the canvas's result, which the caller waits on); a canvas run
older than the orphan check's age with no message of it anywhere -- queued, unacked, held by
a live worker (any ``fleet.node``, ``fleet.canvas_finish``, or a step the engine runs for one
of its nodes) -- twice, a grace period apart, fails, naming the loss, and its
``fleet.canvas_finish`` result is failed with it, so the caller's ``get()`` raises instead of
waiting for ever.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from celery import Celery

from fleet.constants import (
    AMQP_SCHEMES,
    CANVAS_FINISH_TASK,
    CANVAS_RUNS_KEY,
)
from fleet.engine.dispatch import Dispatcher
from fleet.errors import WorkflowFailed
from workers.suspects import lost

log = logging.getLogger("fleet.orphans")
LOST = "a message of its canvas was lost by the broker, and the rest of the canvas with it"


def finish_id(chain: Any, run_id: str) -> str:
    """The task id of run ``run_id``'s ``fleet.canvas_finish`` in a task's chain (Celery's
    request.chain: signatures as dicts, chords' bodies nested), or ''."""
    if isinstance(chain, list | tuple):
        return next((found for item in chain if (found := finish_id(item, run_id))), "")
    if not isinstance(chain, dict):
        return ""
    kwargs = chain.get("kwargs")
    if chain.get("task") == CANVAS_FINISH_TASK and isinstance(kwargs, dict):
        run = kwargs.get("run")
        if isinstance(run, dict) and run.get("id") == run_id:
            return str((chain.get("options") or {}).get("task_id") or "")
    return next((found for v in chain.values() if (found := finish_id(v, run_id))), "")


def watch(client: redis.Redis, broker_url: str, run_id: str, chain: Any) -> None:
    """Record a canvas run for the orphan check (``fleet.canvas_start``, once per run): on a
    Redis broker only, the one the check looks into (and which removes the entry again)."""
    if broker_url.startswith(AMQP_SCHEMES):
        return
    entry = {"since": time.time(), "finish": finish_id(chain, run_id)}
    client.hset(CANVAS_RUNS_KEY, run_id, json.dumps(entry))


def watched(client: redis.Redis, before: float) -> dict[str, dict[str, Any]]:
    """Canvas runs recorded before ``before`` (epoch seconds)."""
    found = {}
    for run_id, raw in client.hgetall(CANVAS_RUNS_KEY).items():
        try:
            entry = json.loads(raw)
            if float(entry["since"]) <= before:
                found[str(run_id)] = entry
        except (ValueError, KeyError, TypeError):
            client.hdel(CANVAS_RUNS_KEY, run_id)
    return found


def check(
    app: Celery,
    engine: Dispatcher,
    client: redis.Redis,
    canvases: dict[str, dict[str, Any]],
    seen_runs: set[str],
    now: float,
    grace_s: float,
) -> int:
    """Fail the canvas runs nothing is carrying on (see the module); returns how many."""
    failed = 0
    for run_id, entry in canvases.items():
        info = engine.store.info(run_id)
        if info is None or info.status != "running":  # ended, or expired: not watched
            client.hdel(CANVAS_RUNS_KEY, run_id)
            continue
        if not lost(client, f"{run_id}|canvas", run_id in seen_runs, now, grace_s):
            continue
        log.warning("canvas run %s: no message of it anywhere: failed (%s)", run_id, LOST)
        if engine.store.fail(run_id, None, LOST) and entry.get("finish"):
            app.backend.mark_as_failure(entry["finish"], WorkflowFailed(run_id, None, LOST))
        client.hdel(CANVAS_RUNS_KEY, run_id)
        failed += 1
    return failed
