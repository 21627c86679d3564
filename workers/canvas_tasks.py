"""A workflow in Celery canvas: as one task (a signature), or compiled to a canvas.

``fleet.workflow`` starts a run of the workflow it carries.

``wf.s(...)`` (see :meth:`fleet.Fleet.signature`) is a signature of this task, so a workflow
goes into a user's ``chain``, ``group`` or ``chord`` like any task. The task validates the
workflow and its inputs (the signature's keywords plus what the chain passed, by the rule in
:mod:`fleet.workflow.chaining`), starts the run -- its id is the task's id -- and returns at
once without a result: the run's end settles the task (:mod:`fleet.messaging.replies`), so no
worker slot waits on a run.

``Workflow.to_canvas()`` (built by :mod:`fleet.client.canvas`) is a chain of
``fleet.canvas_start``, the nodes level by level (``fleet.node``; a level of several is a
group, and a group before the next level is a chord), and ``fleet.canvas_finish``. An op
node's task runs its op like ``fleet.step`` does, but sends nothing: the canvas sends what
follows. A map or an agent node's task hands the node to the engine, restricted to that node
(``run["within"]``), and is settled like ``fleet.workflow`` when the node's last step ends.
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry

from fleet.constants import (
    CANVAS_FINISH_TASK,
    CANVAS_START_TASK,
    NODE_TASK,
    WORKFLOW_KWARG,
    WORKFLOW_TASK,
)
from fleet.engine.compiler import compile_workflow
from fleet.engine.dispatch import RUN_OPTIONS, Dispatcher, new_run
from fleet.engine.readiness import StepCall, decide
from fleet.errors import FleetError, WorkflowFailed
from fleet.messaging.app import app
from fleet.messaging.replies import reply_of
from fleet.sdk.registry import registry
from fleet.workflow.chaining import chained_inputs
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.split import expand_splits
from fleet.workflow.validate import check_size, validate
from workers.canvas_orphans import watch
from workers.recovery import StepRequest, begin
from workers.runtime import runtime
from workers.tasks import execute

# canvas node kinds the engine runs: maps, sub-workflows and loops, `celery:` steps
ENGINE_NODES = ("agent", "map", "celery")


@app.task(name=WORKFLOW_TASK, bind=True)
def start_workflow(self: Task, *args: Any, **kwargs: Any) -> NoReturn:
    """Start a run of the workflow under ``WORKFLOW_KWARG``; the run's outputs become this
    task's result. The other keywords are inputs by name: the signature's, and any a caller
    added (``apply_async(kwargs=...)``), merged by Celery as for any task."""
    carried = kwargs.pop(WORKFLOW_KWARG, None)
    if not isinstance(carried, dict):
        raise FleetError(f"a {WORKFLOW_TASK} message without '{WORKFLOW_KWARG}' (the workflow)")
    engine = runtime(self.app).engine
    spec = WorkflowSpec.model_validate(carried["spec"])
    spec = expand_splits(spec, registry, engine.cfg.splits)
    validate(spec, engine.cfg, registry)
    run_options: dict[str, Any] | None = carried.get("run_options")
    values = {**spec.defaults, **chained_inputs(spec, args, kwargs)}
    check_size(values, engine.cfg.max_value_bytes)
    run_id = str(self.request.id)
    if engine.store.status(run_id) is not None:
        raise Ignore()  # this message came again (its worker died): the run is under way
    compiled = compile_workflow(spec, engine.cfg, registry)
    runtime(self.app).registered.check(compiled)
    run = new_run(compiled, run_id, run_options or {})
    engine.start(compiled, run, values, reply=reply_of(self.request))
    raise Ignore()  # the run's end stores the result and sends the rest of the canvas


# -- a workflow compiled to canvas (fleet.client.canvas builds the chain) -------------------


@app.task(name=CANVAS_START_TASK, bind=True)
def canvas_start(
    self: Task, *_: Any, workflow: dict[str, Any], inputs: dict[str, Any], run: dict[str, Any]
) -> dict[str, Any]:
    """The canvas's first task: record the run and its inputs (once: a canvas is one run)."""
    engine = runtime(self.app).engine
    if engine.store.status(run["id"]) is None:
        spec = WorkflowSpec.model_validate(workflow)
        engine.register(compile_workflow(spec, engine.cfg, registry))
        meta = {k: run.get(k) for k in RUN_OPTIONS}
        engine.store.create(run["id"], spec.name, meta, inputs=inputs)
        # watched by the orphan check: a lost message fails the run and the canvas's result
        watch(engine.store.redis, engine.cfg.broker_url, run["id"], self.request.chain)
    return {"run": run["id"]}


@app.task(name=NODE_TASK, bind=True, Request=StepRequest)
def canvas_node(self: Task, *_: Any, call: StepCall, run: dict[str, Any]) -> Any:
    """One node of a canvas: an op node runs here as a step does; a map, an agent node (a
    sub-workflow, a loop) or a ``celery:`` step runs through the engine, and this task ends
    when it has. A node whose condition is false, or whose inputs were ruled out, is
    skipped."""
    engine = runtime(self.app).engine
    path = call["path"]
    state = _live_state(engine, run)
    if path in state:
        return state[path]  # this message came again: the node ran
    decision = decide(engine.workflow(run["spec"]), state)
    if path in decision.settled:  # ruled out (or an empty map): nothing to run
        if decision.settled[path] is None:
            engine.store.add_skips(run["id"], [path])
        return decision.settled[path]
    if call["kind"] in ENGINE_NODES:
        engine.store.owe_reply(run["id"], path, reply_of(self.request))
        engine.advance({**run, "within": path}, state, owner=self.request.id or path)
        raise Ignore()  # the node's last step settles this task (fleet.messaging.replies)
    ready = next((c for c in decision.ready if c["path"] == path), None)
    if ready is None:
        raise FleetError(f"node '{path}' is not ready: the nodes it reads have not run")
    rt = runtime(self.app)
    lease = begin(self, rt, ready, run, canvas=True)  # Ignore: another copy runs it
    try:
        outputs = execute(self, rt, ready, run, lease.listened)[2]
    except Retry:  # the next attempt was sent: a late copy of this one must not run
        lease.end_by_retry()
        raise
    finally:
        lease.release()
    return outputs


@app.task(name=CANVAS_FINISH_TASK, bind=True)
def canvas_finish(self: Task, *_: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The canvas's last task: the workflow's outputs, recorded as the run's."""
    engine = runtime(self.app).engine
    info = engine.store.info(run["id"])
    if info is not None and info.status == "succeeded":
        return info.outputs or {}
    decision = decide(engine.workflow(run["spec"]), _live_state(engine, run))
    if not decision.finished:
        left = ", ".join(sorted({c["path"] for c in decision.ready})) or "?"
        why = f"the canvas ended before node(s) {left} ran"
        engine.store.fail(run["id"], None, why)
        raise WorkflowFailed(run["id"], None, why)
    engine.store.succeed(run["id"], decision.outputs)
    return decision.outputs


def _live_state(engine: Dispatcher, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's state; raises WorkflowFailed when the run failed (the canvas fails too)."""
    info = engine.store.info(run["id"])
    if info is None:
        raise WorkflowFailed(run["id"], None, "no record of this run (expired, or not started)")
    if info.status == "failed":
        raise WorkflowFailed(run["id"], info.error_node, info.error or "failed")
    return engine.store.state(run["id"])
