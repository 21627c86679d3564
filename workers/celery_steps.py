"""Existing Celery tasks as workflow steps: a ``celery:<task name>`` node.

The engine sends that task by name (:mod:`fleet.engine.dispatch`) to the queue the router
picks, with ``fleet.celery_done`` / ``fleet.celery_failed`` as its link and link_error: they
record its end as a ``fleet.step`` records its own, and move the run on. A fleet worker that
starts such a task notes when and where, for the step's trace.

On a fleet worker such a task gets what a ``fleet.step`` gets before its op runs
(:func:`guard_tasks`, when the worker starts): the worker's own trust check (the message
carries the data's sensitivity; a client's configuration cannot widen the rule), the step's
start lease (:mod:`fleet.store.leases`: a second copy while one runs, or one after the step's
end was recorded, does not run the task; its holder's death is counted as a fleet.step's),
and ``fleet.sdk.current_step()`` with the step's idempotency key. Its task id is the same
each time the step is sent (``celery_task_id``), and the orphan check and the heartbeats
know its message by its headers: a long task is not taken for a lost one.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import task_prerun

from fleet.constants import (
    CELERY_DONE_TASK,
    CELERY_FAILED_TASK,
    CELERY_LEVEL_HEADER,
    CELERY_OP_PREFIX,
    CELERY_RUN_HEADER,
    CELERY_START_KEY,
    CELERY_STEP_HEADER,
    ROUTE_HEADER,
    TASK_PREFIX,
)
from fleet.engine.readiness import StepCall
from fleet.messaging.app import app, fleet_config
from fleet.sdk.step import StepContext, running
from fleet.store.leases import lease_field
from fleet.store.records import TraceEntry
from workers.runtime import runtime
from workers.tasks import observe, untrusted

log = logging.getLogger("fleet.tasks")


def guard_tasks(app: Celery) -> None:
    """Wrap every plain task of ``app`` (not Celery's, not the fleet's) so that, run as a
    `celery:` step, it first passes the checks a fleet step passes (see the module's doc).
    Called once when the worker starts, before its pool's tracers read ``task.run``."""
    for name, task in list(app.tasks.items()):
        if name.startswith(("celery.", TASK_PREFIX)) or getattr(task, "_fleet_guarded", False):
            continue
        setattr(task, "run", _guarded(task, task.run))  # noqa: B010 (a method: mypy)
        setattr(task, "_fleet_guarded", True)  # noqa: B010


def _guarded(task: Task, run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        request = task.request
        path = getattr(request, CELERY_STEP_HEADER, None)
        run_id = getattr(request, CELERY_RUN_HEADER, None)
        if not path or not run_id or request.called_directly:
            return run(*args, **kwargs)  # not a step: the task as its owner wrote it
        with _as_step(task, str(run_id), str(path)):
            return run(*args, **kwargs)

    return guarded


@contextmanager
def _as_step(task: Task, run_id: str, path: str) -> Iterator[None]:
    """Run the task as step ``path`` of run ``run_id``, or raise Ignore (after failing the
    run where that is due) when this worker, or this copy, must not run it."""
    rt = runtime(task.app)
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key")
    cls = rt.cfg.class_for_queue(queue or "")
    level = getattr(request, CELERY_LEVEL_HEADER, None)
    if why := untrusted(rt.cfg, cls, level, path):
        _refuse(task, run_id, path, cls, queue, why)
    attempt = int(request.retries or 0)
    token = rt.keeper.token(request.hostname)
    found = rt.leases.begin(run_id, path, attempt, token, False, request.hostname or "")
    if found.status == "failed" or found.verdict != "run":
        log.info("run %s: %s not run by this copy (%s)", run_id, path, found.verdict)
        raise Ignore()
    if found.takeovers >= rt.cfg.max_worker_losses:
        why = (
            f"node '{path}' ({task.name}): its worker died running it {found.takeovers} "
            "times (its start lease lapsed each time); not run again"
        )
        _refuse(task, run_id, path, cls, queue, why)
    field = lease_field(path, attempt)
    rt.keeper.hold(rt.leases, run_id, field, token)
    try:
        with running(StepContext(run_id, path, attempt)):
            yield
    finally:
        rt.keeper.release(run_id, field)


def _refuse(
    task: Task, run_id: str, path: str, cls: str | None, queue: str | None, why: str
) -> NoReturn:
    """Fail the run naming the node, trace the step as failed, and end the task."""
    store = runtime(task.app).store
    now = time.time()
    op = f"{CELERY_OP_PREFIX}{task.name}"
    entry = TraceEntry(path, op, "tool", cls, queue, task.request.hostname, "failed", None,
                       now, now, error=why)  # fmt: skip
    store.add_trace(run_id, entry)
    store.fail(run_id, path, why)
    log.warning("run %s: %s", run_id, why)
    raise Ignore()


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
