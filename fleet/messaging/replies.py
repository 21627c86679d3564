"""Settle the Celery tasks that wait for a run: a workflow started as a Celery signature.

The task that starts such a run (``fleet.workflow``, see :mod:`workers.canvas_tasks`) returns
before the run ends -- a worker slot must not sit blocked on a run, the classic Celery
deadlock -- so Celery does not finish it then. It leaves its request (id, group, chord,
callbacks, errbacks, the rest of its chain) with the run as a *reply*; whichever process ends
the run settles it, exactly as Celery's tracer would have on return: the callbacks and the
next task of the chain are sent with the outputs, the result is stored (and counted in its
chord), and the task's end is announced to Flower. A failed run stores a
:class:`~fleet.errors.WorkflowFailed` and calls the errbacks; the rest of the chain fails.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signature
from celery.app.task import Context

from fleet.errors import WorkflowFailed
from fleet.store.records import Ending

log = logging.getLogger("fleet.replies")

# What a request carries that Celery needs to finish it later (celery.app.task.Context).
REPLY_FIELDS = (
    "id",
    "task",
    "group",
    "group_index",
    "chord",
    "callbacks",
    "errbacks",
    "chain",
    "root_id",
    "parent_id",
    "reply_to",
    "correlation_id",
    "ignore_result",
    "delivery_info",
    "hostname",
)
STARTED_AT = "fleet_started_at"


def reply_of(request: Context) -> dict[str, Any]:
    """The part of a task's request that settling it later needs (JSON)."""
    reply = {name: getattr(request, name, None) for name in REPLY_FIELDS}
    reply[STARTED_AT] = time.time()
    plain: dict[str, Any] = json.loads(json.dumps(reply, default=str))
    return plain


def replier(app: Celery) -> Callable[[str, Ending, dict[str, str]], None]:
    """The run store's ``on_end`` hook: settle every reply the ended run owed."""

    def on_end(run_id: str, ending: Ending, owed: dict[str, str]) -> None:
        for raw in owed.values():
            try:
                reply = json.loads(raw)
                if ending.status == "succeeded":  # the run, or the part of it the reply waits on
                    succeed(app, reply, ending.outputs or {})
                else:  # every task still waiting on the run fails with it
                    error = ending.error or "the run failed"
                    fail(app, reply, WorkflowFailed(run_id, ending.node, error))
            except Exception:  # settling must not fail the step that ended the run
                log.exception("run %s: could not settle the Celery task waiting for it", run_id)

    return on_end


def succeed(app: Celery, reply: dict[str, Any], result: Any) -> None:
    """Finish a waiting task with ``result``, as Celery's tracer does when a task returns."""
    request = Context(reply)
    task_id = str(reply["id"])
    priority = (reply.get("delivery_info") or {}).get("priority")
    ids = {"parent_id": task_id, "root_id": reply.get("root_id") or task_id}
    for callback in reply.get("callbacks") or ():
        signature(callback, app=app).apply_async((result,), priority=priority, **ids)
    chain = reply.get("chain") or []
    if chain:
        following = signature(chain[-1], app=app)
        following.apply_async((result,), chain=chain[:-1], priority=priority, **ids)
    app.backend.mark_as_done(task_id, result, request=request)
    _announce(app, reply, "task-succeeded", result=repr(result)[:1024])


def fail(app: Celery, reply: dict[str, Any], exc: Exception) -> None:
    """Fail a waiting task: store the error, fail the rest of its chain, call its errbacks."""
    request = Context(reply)
    task_id = str(reply["id"])
    # Errbacks of tasks this worker lacks are sent by name with the task id (Celery's way).
    app.backend.mark_as_failure(task_id, exc, request=request, call_errbacks=True)
    _announce(app, reply, "task-failed", exception=repr(exc), traceback="")


def _announce(app: Celery, reply: dict[str, Any], event: str, **fields: Any) -> None:
    """Tell Flower (task events) that the task ended; its start was announced by its worker."""
    started = float(reply.get(STARTED_AT) or time.time())
    try:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(event, uuid=reply["id"], runtime=time.time() - started, **fields)
    except Exception as exc:  # monitoring only: the result is stored already
        log.warning("could not announce %s of task %s: %s", event, reply.get("id"), exc)
