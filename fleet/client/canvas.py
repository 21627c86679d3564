"""Compile a workflow into a Celery canvas: ``Workflow.to_canvas()`` / ``Fleet.to_canvas()``.

The canvas is a chain: ``fleet.canvas_start`` (records the run and its inputs), then the
workflow's top-level nodes level by level -- a node's level is one more than the deepest node
it reads, so everything a node reads has run before its level starts -- and
``fleet.canvas_finish`` (the outputs, the canvas's result). A level of one node is a task; a
level of several is a ``group``, and Celery makes a group followed by the next level a
``chord``. So sequences are chains, fan-out is a group, a join is a chord.

What canvas cannot express stays with the engine, inside the canvas: a condition (``when``)
is decided by the node's own task, which skips the node; a ``map``, an agent node (a
sub-workflow, a loop) and a ``celery:`` step (its task is sent by name, with a link) are one
task that hands the node to the engine and ends when its last step has (see
:mod:`workers.canvas_tasks`). Each op node's task is routed when it is sent, by
the same router and policy as a ``fleet.step``. Data goes through the run store as in any run,
not through task results: a level may take a node that finished long ago.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery, Signature, chain, group

from fleet.config import FleetConfig
from fleet.constants import CANVAS_FINISH_TASK, CANVAS_START_TASK, CELERY_OP_PREFIX, NODE_TASK
from fleet.engine.compiler import CompiledWorkflow, Scope
from fleet.engine.dispatch import new_run
from fleet.engine.readiness import StepCall
from fleet.errors import FleetError
from fleet.workflow.waits import wait_nodes

ENGINE = "engine"  # what Flower shows for a node the engine runs inside the canvas
ENGINE_NODES = ("map", "agent", "celery")  # kinds of node the engine runs (workers.canvas_tasks)


@dataclass(frozen=True)
class CanvasNode:
    """One node's task in the canvas."""

    name: str
    kind: str  # an op's kind; "map", "agent" or "celery" for a node the engine runs
    what: str  # the op, or what the engine runs
    classes: tuple[str, ...]  # where the router may send it (the control class: engine)


def levels(scope: Scope) -> list[list[str]]:
    """Top-level nodes by level: 0 for a node that reads none, else one more than the
    deepest node it reads; in workflow order within a level."""
    level: dict[str, int] = {}
    for node in scope.order:
        deps = scope.deps[node.name]
        level[node.name] = 1 + max((level[d] for d in deps), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for node in scope.wf.nodes:
        out[level[node.name]].append(node.name)
    return out


def canvas_nodes(workflow: CompiledWorkflow, control: str) -> list[list[CanvasNode]]:
    """The canvas's levels, as what each node's task is."""
    root = workflow.root
    return [[_node(root, name, control) for name in names] for names in levels(root)]


def _node(root: Scope, name: str, control: str) -> CanvasNode:
    node = root.wf.node(name)
    if node.workflow is not None:
        what = f"loop of {node.workflow.name}" if node.loop else f"agent {node.workflow.name}"
        return CanvasNode(name, "agent", what, (control,))
    op = root.ops[name]
    if node.map is not None:
        return CanvasNode(name, "map", f"map of {op.name}", (control,))
    if op.name.startswith(CELERY_OP_PREFIX):  # the engine sends it by name, with its link
        return CanvasNode(name, "celery", op.name, tuple(root.classes[name]))
    return CanvasNode(name, op.kind, op.name, tuple(root.classes[name]))


def build(
    app: Celery,
    cfg: FleetConfig,
    workflow: CompiledWorkflow,
    values: dict[str, Any],
    options: dict[str, Any],
) -> Signature:
    """The canvas of one run of ``workflow`` with inputs ``values`` (checked already). A
    workflow with a wait node is refused: a canvas task would hold a worker slot for the
    whole wait, which is what parking a run avoids."""
    if found := wait_nodes(workflow.spec):
        path, op = found[0]
        raise FleetError(
            f"node '{path}' waits ({op}): a Celery canvas cannot park a run without holding a "
            "worker slot; submit this workflow (Fleet.submit, or Fleet.signature in your "
            "canvas) instead of to_canvas"
        )
    control = cfg.classes[cfg.control_class].queue_name
    run = new_run(workflow, uuid.uuid4().hex, options)
    extra = {"priority": cfg.message_priority(run.get("priority"))}
    here = {"queue": control, **extra}
    start = Signature(
        CANVAS_START_TASK,
        kwargs={"workflow": workflow.spec.model_dump(mode="json"), "inputs": values, "run": run},
        options=here,
        immutable=True,
        app=app,
    )
    parts: list[Signature] = [start]
    for level in canvas_nodes(workflow, control):
        tasks = [_task(app, workflow, node, run, here, extra) for node in level]
        parts.append(tasks[0] if len(tasks) == 1 else group(tasks, app=app))
    finish = Signature(
        CANVAS_FINISH_TASK, kwargs={"run": run}, options=here, immutable=True, app=app
    )
    parts.append(finish)
    return chain(*parts, app=app)


def _task(
    app: Celery,
    workflow: CompiledWorkflow,
    node: CanvasNode,
    run: dict[str, Any],
    control: dict[str, Any],
    extra: dict[str, Any],
) -> Signature:
    root = workflow.root
    spec = root.wf.node(node.name)
    op = root.ops.get(node.name)
    call: StepCall = {
        "path": node.name,
        "op": op.name if op is not None else "",
        "kind": node.kind,
        "args": {},  # read from the run's state when the node runs
        "classes": list(node.classes),
        "retries": (op.retries if op is not None else 0) if spec.retries is None else spec.retries,
        "timeout": spec.timeout,
        "remaining": root.height[node.name],
        "group": None,
        "sensitivity": root.levels.get(node.name),
    }
    label = ENGINE if node.kind in ENGINE_NODES else node.what
    options: dict[str, Any] = {"shadow": f"{workflow.spec.name}:{node.name} [{label}]", **extra}
    if label == ENGINE:
        options.update(control)  # engine work starts on the control class
    elif spec.timeout:
        options.update(soft_time_limit=spec.timeout, time_limit=spec.timeout + 5)
    return Signature(
        NODE_TASK,
        kwargs={"call": call, "run": run},
        options=options,
        immutable=True,
        app=app,
    )


def describe(workflow: CompiledWorkflow, control: str) -> str:
    """The canvas as text: what ``fleet compile --canvas`` prints."""
    lines = ["chain(", f"  {CANVAS_START_TASK}  [{control}]"]
    for level in canvas_nodes(workflow, control):
        indent = "  "
        if len(level) > 1:
            lines.append("  group(")
            indent = "    "
        for node in level:
            where = ", ".join(node.classes)
            lines.append(f"{indent}{NODE_TASK} {node.name}: {node.what} ({node.kind})  [{where}]")
        if len(level) > 1:
            lines.append("  )")
    lines += [f"  {CANVAS_FINISH_TASK}  [{control}]", ")"]
    return "\n".join(lines)
