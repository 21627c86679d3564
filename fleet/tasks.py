"""The two Celery tasks a workflow runs as: ``fleet.step`` and ``fleet.advance``.

Every task takes the run's envelope (or, after a group, the list of its branches' envelopes)
as its first argument and returns the envelope with its own contribution added.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore

from fleet.app import app, fleet_config
from fleet.compiler import build, segment_levels, send
from fleet.errors import StepFailed
from fleet.model import WorkflowSpec
from fleet.ops import OpSpec, registry
from fleet.plan import Envelope, Frame, StepCall, advance, merge_envelopes, resolve_args
from fleet.profiles import OnlineStats, current_store, units_of
from fleet.runs import RunStore, TraceEntry

log = logging.getLogger("fleet.tasks")


def as_envelope(incoming: Any) -> Envelope:
    if isinstance(incoming, list):
        return merge_envelopes([as_envelope(part) for part in incoming])
    if not isinstance(incoming, dict) or "outputs" not in incoming:
        raise TypeError(f"expected a run envelope, got {type(incoming).__name__}")
    env: Envelope = incoming  # type: ignore[assignment]
    return env


@cache
def _store(url: str, ttl: int) -> RunStore:
    return RunStore(url, ttl)


def run_store(task: Task) -> RunStore:
    cfg = fleet_config(task.app)
    return _store(cfg.backend_url, cfg.run_ttl)


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
            "sent_at": getattr(req, "fleet_sent_at", None),
            "attempt": req.retries or 0,
            "route": getattr(req, "fleet_route", None) or {},
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


@app.task(name="fleet.step", bind=True)
def step(self: Task, incoming: Any, *, call: StepCall, run: dict[str, Any]) -> Envelope:
    """Run one op node and add its outputs to the envelope."""
    store = run_store(self)
    if store.status(run["id"]) == "failed":
        raise Ignore()  # another branch failed the run: do no more work for it
    env = as_envelope(incoming)
    trace = _Trace(self, call)
    registry.load_modules(fleet_config(self.app).op_modules)
    op = registry.get(call["op"])
    try:
        args = resolve_args(call, env)
        outputs = _outputs(op, op.func(**args))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        retryable = not op.retry_on or isinstance(exc, op.retry_on)
        if self.request.retries < call["retries"] and retryable:
            store.add_trace(run["id"], trace.entry("retrying", error))
            countdown = min(2.0**self.request.retries * 0.5, 30.0)
            raise self.retry(exc=exc, countdown=countdown, max_retries=call["retries"]) from exc
        store.add_trace(run["id"], trace.entry("failed", error))
        store.fail(run["id"], call["path"], f"node '{call['path']}' (op {op.name}): {error}")
        log.warning("run %s: node %s failed: %s", run["id"], call["path"], error)
        raise StepFailed(call["path"], op.name, error) from exc
    entry = trace.entry("succeeded")
    store.add_trace(run["id"], entry)
    _observe(self, call, units_of(call["op"], args), entry)
    env["outputs"][call["path"]] = outputs
    return env


def _observe(task: Task, call: StepCall, units: float, entry: TraceEntry) -> None:
    """Feed the run time into the shared moving averages the router estimates from."""
    if entry.cls is None:
        return
    profile = current_store().get(call["op"], entry.cls)
    predicted = None
    if profile is not None:
        predicted = profile.predict(units)
    try:
        OnlineStats(run_store(task).redis).observe(call["op"], entry.cls, entry.run_s, predicted)
    except redis.RedisError as exc:  # statistics must never fail a step
        log.warning("could not record online profile: %s", exc)


@app.task(name="fleet.ping")
def ping(value: Any = None) -> Any:
    """A plain Celery task (no workflow, no run record): health checks and baselines."""
    return value


@app.task(name="fleet.advance", bind=True)
def advance_task(
    self: Task, incoming: Any, *, run: dict[str, Any], spec: dict[str, Any], frames: list[Frame]
) -> dict[str, Any]:
    """Decide conditions and loops from the outputs so far, then send the next segment."""
    store = run_store(self)
    if store.status(run["id"]) == "failed":
        return {"stopped": "run failed"}
    env = as_envelope(incoming)
    cfg = fleet_config(self.app)
    registry.load_modules(cfg.op_modules)
    try:
        plan = advance(WorkflowSpec.model_validate(spec), frames, env, cfg, registry)
    except Exception as exc:
        store.fail(run["id"], None, f"planning failed: {type(exc).__name__}: {exc}")
        raise
    store.add_skips(run["id"], plan.envelope["skipped"][len(env["skipped"]) :])
    if plan.finished:
        store.succeed(run["id"], plan.outputs)
        return {"finished": True}
    send(build(self.app, plan, run, spec), plan.envelope)
    return {"next": [[c["path"] for c in level] for level in segment_levels(plan.levels)]}
