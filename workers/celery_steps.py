"""Existing Celery tasks as workflow steps: a ``celery:<task name>`` node.

The engine sends that task by name (:mod:`fleet.engine.dispatch`) to the queue the router
picks, with ``fleet.celery_done`` / ``fleet.celery_failed`` as its link and link_error: they
record its end as a ``fleet.step`` records its own, and move the run on. A fleet worker that
starts such a task notes when and where, for the step's trace.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Task
from celery.signals import task_prerun

from fleet.constants import (
    CELERY_DONE_TASK,
    CELERY_FAILED_TASK,
    CELERY_START_KEY,
    CELERY_STEP_HEADER,
    ROUTE_HEADER,
)
from fleet.engine.readiness import StepCall
from fleet.messaging.app import app, fleet_config
from fleet.store.records import TraceEntry
from workers.runtime import runtime
from workers.tasks import observe


@task_prerun.connect
def _note_celery_step_start(task_id: str = "", task: Task | None = None, **_: Any) -> None:
    """A `celery:` step's task starts on a fleet worker: note when and where, for its trace."""
    if task is None or getattr(task.request, CELERY_STEP_HEADER, None) is None:
        return
    store = runtime(task.app).store
    route = getattr(task.request, ROUTE_HEADER, None) or {}
    note = {"started_at": time.time(), "worker": task.request.hostname, "route": route}
    store.redis.set(CELERY_START_KEY.format(task_id=task_id), json.dumps(note), ex=store.ttl)


def _celery_entry(
    task: Task, call: StepCall, sent_at: float, queue: str | None, status: str, error: str = ""
) -> TraceEntry:
    """The step's trace record; its start and worker as the task's worker noted them (a
    worker without the fleet's app notes nothing: its wait then counts as run time)."""
    store = runtime(task.app).store
    key = CELERY_START_KEY.format(task_id=task.request.parent_id or "")
    raw = store.redis.getdel(key) if task.request.parent_id else None
    note = json.loads(raw) if raw else {}
    return TraceEntry(
        node=call["path"],
        op=call["op"],
        kind=call["kind"],
        cls=fleet_config(task.app).class_for_queue(queue or ""),
        queue=queue,
        worker=note.get("worker"),
        status=status,
        sent_at=sent_at,
        started_at=float(note.get("started_at") or sent_at),
        ended_at=time.time(),
        route=note.get("route") or {},
        error=error or None,
    )


def celery_outputs(result: Any, call: StepCall, limit: int) -> dict[str, Any]:
    """A task's return value as the step's outputs: ``result``, and the declared keys."""
    outputs = {"result": result}
    declared = call.get("outputs") or []
    if declared:
        if not isinstance(result, dict):
            raise TypeError(f"returned {type(result).__name__}, not a dict with {declared}")
        missing = [k for k in declared if k not in result]
        if missing:
            raise TypeError(f"returned a dict without key(s) {', '.join(missing)}")
        outputs.update({k: result[k] for k in declared})
    size = len(json.dumps(outputs, default=str))
    if size > limit:
        raise ValueError(f"returned {size} bytes (limit {limit}, max_value_bytes)")
    return outputs


@app.task(name=CELERY_DONE_TASK, bind=True, ignore_result=True)
def celery_done(
    self: Task,
    result: Any,
    *,
    call: StepCall,
    run: dict[str, Any],
    sent_at: float,
    queue: str | None = None,
) -> None:
    """The link of a `celery:` step's task: record its result as the step's outputs, and send
    what that made ready."""
    rt = runtime(self.app)
    engine = rt.engine
    try:
        outputs = celery_outputs(result, call, engine.cfg.max_value_bytes)
    except (TypeError, ValueError) as exc:
        _celery_failed(self, call, run, sent_at, queue, str(exc))
        return
    entry = _celery_entry(self, call, sent_at, queue, "succeeded")
    status, state = engine.store.record_step(
        run["id"],
        call["path"],
        outputs,
        entry,
        lambda pipe: observe(pipe, call, 1.0, entry, rt, run["id"]),
        call.get("group"),
    )
    if status == "running" and state is not None:
        engine.advance(run, state, owner=self.request.id or call["path"])


@app.task(name=CELERY_FAILED_TASK, bind=True, ignore_result=True)
def celery_failed(
    self: Task,
    request: Any = None,
    exc: BaseException | None = None,
    traceback: Any = None,
    *,
    call: StepCall,
    run: dict[str, Any],
    sent_at: float,
    queue: str | None = None,
) -> None:
    """The link_error of a `celery:` step's task (called with the failed request and its
    exception, or -- sent by name from a worker without the fleet -- its task id): fail the
    run, naming the node and the task's error."""
    if exc is None and isinstance(request, str):
        exc = self.app.AsyncResult(request).result
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    _celery_failed(self, call, run, sent_at, queue, error)


def _celery_failed(
    task: Task,
    call: StepCall,
    run: dict[str, Any],
    sent_at: float,
    queue: str | None,
    error: str,
) -> None:
    store = runtime(task.app).store
    store.add_trace(run["id"], _celery_entry(task, call, sent_at, queue, "failed", error))
    store.fail(run["id"], call["path"], f"node '{call['path']}' ({call['op']}): {error}")
