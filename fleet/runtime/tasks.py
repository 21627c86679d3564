"""The fleet's Celery task: ``fleet.step`` runs one op node, records it, and sends what it
made ready (see :mod:`fleet.runtime.dispatch`). ``fleet.ping`` is a plain task for health
checks and baselines.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from functools import cache
from typing import Any, NoReturn

from celery import Celery, Task
from celery.exceptions import Ignore

from fleet.constants import PING_TASK, ROUTE_HEADER, SENT_AT_HEADER, STEP_TASK
from fleet.engine.plan import StepCall
from fleet.errors import StepFailed
from fleet.registry import OpSpec, registry
from fleet.routing.profiles import OnlineStats, current_store
from fleet.runtime.app import app, fleet_config
from fleet.runtime.dispatch import Dispatcher
from fleet.runtime.runs import RunStore, TraceEntry

log = logging.getLogger("fleet.tasks")
RECHECK_AFTER_S = 0.05  # a step that waited longer re-reads its run's status before running


@cache
def dispatcher(celery_app: Celery) -> Dispatcher:
    """One dispatcher (run store, compiled-workflow cache) per app and process."""
    cfg = fleet_config(celery_app)
    registry.load(cfg.op_modules, cfg.op_plugins)
    return Dispatcher(celery_app, cfg, RunStore(cfg.backend_url, cfg.run_ttl), registry)


def run_store(task: Task) -> RunStore:
    return dispatcher(task.app).store


def _outputs(op: OpSpec, result: Any) -> dict[str, Any]:
    """Check an op's return value against its declared outputs and JSON-ability."""
    if op.outputs == ("result",) and not (isinstance(result, dict) and "result" in result):
        result = {"result": result}
    if not isinstance(result, dict):
        raise TypeError(f"op returned {type(result).__name__}, expected a dict of outputs")
    missing = [name for name in op.outputs if name not in result]
    if missing:
        raise TypeError(f"op did not return output(s) {', '.join(missing)}")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"op returned a value that is not JSON: {exc}") from None
    return result


class _Trace:
    """Builds the step's trace record from the message it arrived in."""

    def __init__(self, task: Task, call: StepCall) -> None:
        req = task.request
        self.queue = (req.delivery_info or {}).get("routing_key")
        self.base = {
            "node": call["path"],
            "op": call["op"],
            "kind": call["kind"],
            "cls": fleet_config(task.app).class_for_queue(self.queue or ""),
            "queue": self.queue,
            "worker": req.hostname,
            "sent_at": getattr(req, SENT_AT_HEADER, None),
            "attempt": req.retries or 0,
            "route": getattr(req, ROUTE_HEADER, None) or {},
        }
        self.started_at = time.time()

    def entry(self, status: str, error: str | None = None) -> TraceEntry:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return TraceEntry(
            **self.base,
            status=status,
            started_at=self.started_at,
            ended_at=time.time(),
            error=error,
            rss_mb=round(rss_kib / 1024.0, 1),
        )


@app.task(name=STEP_TASK, bind=True, ignore_result=True)
def step(self: Task, *, call: StepCall, run: dict[str, Any]) -> dict[str, Any]:
    """Run one op node, record its outputs and trace, then send the steps it made ready."""
    engine = dispatcher(self.app)
    store = engine.store
    if _waited(self) and store.status(run["id"]) == "failed":
        raise Ignore()  # another branch failed the run: do no more work for it
    trace = _Trace(self, call)
    op = registry.get(call["op"])
    try:
        outputs = _outputs(op, op.func(**call["args"]))
    except Exception as exc:
        _failed(self, store, op, call, run, trace, exc)
    entry = trace.entry("succeeded")
    units = op.units_of(call["args"])
    status, state = store.record_step(
        run["id"], call["path"], outputs, entry, lambda pipe: _observe(pipe, call, units, entry)
    )
    if status == "running":
        engine.advance(run, state, owner=self.request.id or call["path"])
    return {"node": call["path"]}


def _waited(task: Task) -> bool:
    """Whether the message sat in its queue long enough for the run to have failed since it
    was sent. The sender read the run's status just before sending, so a step that starts at
    once (the common case in a chain) skips the round trip; one that waited checks first."""
    sent_at = getattr(task.request, SENT_AT_HEADER, None)
    return sent_at is None or time.time() - float(sent_at) > RECHECK_AFTER_S


def _failed(
    task: Task,
    store: RunStore,
    op: OpSpec,
    call: StepCall,
    run: dict[str, Any],
    trace: _Trace,
    exc: Exception,
) -> NoReturn:
    """Retry the step when it may, else fail its run naming the node (always raises)."""
    error = f"{type(exc).__name__}: {exc}"
    retryable = not op.retry_on or isinstance(exc, op.retry_on)
    if task.request.retries < call["retries"] and retryable:
        store.add_trace(run["id"], trace.entry("retrying", error))
        countdown = min(2.0**task.request.retries * 0.5, 30.0)
        raise task.retry(exc=exc, countdown=countdown, max_retries=call["retries"]) from exc
    store.add_trace(run["id"], trace.entry("failed", error))
    store.fail(run["id"], call["path"], f"node '{call['path']}' (op {op.name}): {error}")
    log.warning("run %s: node %s failed: %s", run["id"], call["path"], error)
    raise StepFailed(call["path"], op.name, error) from exc


def _observe(pipe: Any, call: StepCall, units: float, entry: TraceEntry) -> None:
    """Feed the run time into the shared moving averages the router estimates from."""
    if entry.cls is None:
        return
    profile = current_store().get(call["op"], entry.cls)
    predicted = profile.predict(units) if profile is not None else None
    OnlineStats.queue(pipe, call["op"], entry.cls, entry.run_s, predicted)


@app.task(name=PING_TASK)
def ping(value: Any = None) -> Any:
    """A plain Celery task (no workflow, no run record): health checks and baselines."""
    return value
