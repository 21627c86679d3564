"""Celery canvas and the fleet: a workflow as a task, and a Celery task as a step.

``fleet.workflow`` starts a run of the workflow it carries.

``wf.s(...)`` (see :meth:`fleet.Fleet.signature`) is a signature of this task, so a workflow
goes into a user's ``chain``, ``group`` or ``chord`` like any task. The task validates the
workflow and its inputs (the signature's keywords plus what the chain passed, by the rule in
:mod:`fleet.workflow.chaining`), starts the run -- its id is the task's id -- and returns at
once without a result: the run's end settles the task (:mod:`fleet.worker.replies`), so no
worker slot waits on a run.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore

from fleet.constants import (
    WORKFLOW_TASK,
)
from fleet.engine.compiler import compile_workflow
from fleet.routing.registered import check_registered
from fleet.sdk.registry import registry
from fleet.worker.app import app
from fleet.worker.replies import reply_of
from fleet.worker.tasks import dispatcher
from fleet.workflow.chaining import chained_inputs
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.split import expand_splits
from fleet.workflow.validate import check_size, validate

RUN_OPTIONS = ("priority", "sla_s", "policy")


@app.task(name=WORKFLOW_TASK, bind=True)
def start_workflow(
    self: Task,
    *args: Any,
    workflow: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    run_options: dict[str, Any] | None = None,
) -> NoReturn:
    """Start a run of ``workflow``; the run's outputs become this task's result."""
    engine = dispatcher(self.app)
    spec = expand_splits(WorkflowSpec.model_validate(workflow), registry)
    validate(spec, engine.cfg, registry)
    values = {**spec.defaults, **chained_inputs(spec, args, inputs or {})}
    check_size(values, engine.cfg.max_value_bytes)
    run_id = str(self.request.id)
    if engine.store.status(run_id) is not None:
        raise Ignore()  # this message came again (its worker died): the run is under way
    compiled = compile_workflow(spec, engine.cfg, registry)
    check_registered(compiled, engine.store.redis, engine.cfg.worker_ttl)
    run: dict[str, Any] = {
        "id": run_id,
        "workflow": spec.name,
        "spec": compiled.digest,
        "submitted_at": time.time(),
    }
    run.update({k: v for k, v in (run_options or {}).items() if k in RUN_OPTIONS and v is not None})
    engine.start(compiled, run, values, reply=reply_of(self.request))
    raise Ignore()  # the run's end stores the result and sends the rest of the canvas
