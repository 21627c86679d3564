"""Decide which steps of a run are ready, from the outputs of the steps that have run.

A run's state is one mapping: node path -> that step's outputs (plus ``inputs`` -> the run's
inputs). Paths are ``name`` at the top level, ``loop#2/name`` in the second iteration of node
``loop``'s body, ``name[3]`` for the fourth item of a mapped node. Everything else -- which
nodes a condition ruled out, which loop iteration is current, what a sub-workflow or a map
returned -- is derived from that mapping by :func:`decide`, the same way every time, so any
step (or the client) can make the decision and two steps finishing at once reach the same one.

Every scope is walked, sub-workflows included, so agent and loop nodes whose inputs are ready
run side by side with each other and with the plain steps of their level; a step is ready as
soon as the nodes it reads have run, not when its whole level has. Pure: no Celery, no Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from fleet.constants import INPUTS
from fleet.engine.compiler import CompiledWorkflow, Scope
from fleet.errors import ReadinessError
from fleet.sdk.registry import OpSpec
from fleet.workflow.model import NodeSpec, Source, alternatives, parse_ref
from fleet.workflow.rules import LOOP_OUTPUT
from fleet.workflow.waits import timeout_handled

Outputs = Mapping[str, Mapping[str, Any]]


class StepCall(TypedDict):
    """Everything a worker needs to run one op node; travels in the task's kwargs."""

    path: str
    op: str
    kind: str
    args: dict[str, Any]  # the op's keyword arguments: input values, then params
    classes: list[str]  # eligible classes, preferred first
    retries: int
    timeout: float | None
    remaining: int  # steps on the longest chain from this one to the end (SLA budgeting)
    group: list[Any] | None  # an item of a map: [the mapped node's path, number of items]
    # the data's sensitivity: the worker's own config must trust its class for it
    sensitivity: NotRequired[str | None]
    # a `celery:` step: the keys of its task's dict result that are outputs too
    outputs: NotRequired[list[str]]
    # the rules that narrowed ``classes`` (trust, the node's own list), for routing's reason
    rule: NotRequired[str]
    # the native runtime the op's models run on: on a GPU class with lanes, it picks the
    # lane's queue (ClassSpec.queue_for)
    runtime: NotRequired[str]
    # how often a process refused the step's runtime and it was routed again
    refused: NotRequired[int]
    # a wait node's timeout: "branch" (something reads its timed_out) or "fail" (the run)
    on_timeout: NotRequired[str]


@dataclass
class Decision:
    ready: list[StepCall] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths ruled out, for the trace
    finished: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    # top-level nodes that have run (-> their outputs) or were ruled out (-> None): a
    # canvas waits on one of them
    settled: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)


@dataclass
class _Result:
    complete: bool
    values: dict[str, Mapping[str, Any]]


_DONE, _SKIPPED, _PENDING = "done", "skipped", "pending"


class _Walker:
    def __init__(self, state: Outputs, max_map_items: int) -> None:
        self.state = state
        self.max_map_items = max_map_items
        self.decision = Decision()

    def scope(self, sc: Scope, prefix: str, inputs: Mapping[str, Any], after: int) -> _Result:
        """Walk one scope instance; ``after``: steps that follow it in the enclosing scopes."""
        values: dict[str, Mapping[str, Any]] = {INPUTS: inputs}
        status: dict[str, str] = {}
        for node in sc.order:
            status[node.name] = self._node(sc, node, prefix, values, status, after)
        complete = all(s != _PENDING for s in status.values())
        if not prefix:
            self.decision.settled = {n: values.get(n) for n, s in status.items() if s != _PENDING}
        return _Result(complete, values)

    def _node(
        self,
        sc: Scope,
        node: NodeSpec,
        prefix: str,
        values: dict[str, Mapping[str, Any]],
        status: dict[str, str],
        after: int,
    ) -> str:
        path = prefix + node.name
        if any(status[d] == _PENDING for d in sc.deps[node.name]):
            return _PENDING
        skip = node.when is not None and not node.when.evaluate(_value(values, node.when.ref))
        if skip or any(_dead(source, status) for source in node.inputs.values()):
            self.decision.skipped.append(path)
            return _SKIPPED
        remaining = sc.height[node.name] + after
        if node.workflow is not None:
            return self._subflow(sc, node, path, values, remaining)
        args = {name: _pick(values, source) for name, source in node.inputs.items()}
        if node.map is not None:
            return self._map(sc, node, path, args, values, remaining)
        if path in self.state:
            values[node.name] = self.state[path]
            return _DONE
        self.decision.ready.append(_call(sc, node, path, args, remaining))
        return _PENDING

    def _map(
        self,
        sc: Scope,
        node: NodeSpec,
        path: str,
        args: dict[str, Any],
        values: dict[str, Mapping[str, Any]],
        remaining: int,
    ) -> str:
        assert node.map is not None
        items = args.pop(node.map)
        if not isinstance(items, list):
            raise ReadinessError(
                path, f"map input '{node.map}' is {type(items).__name__}, not a list"
            )
        if len(items) > self.max_map_items:
            raise ReadinessError(
                path,
                f"map input '{node.map}' has {len(items)} items (limit {self.max_map_items}, "
                "max_map_items in the fleet config)",
            )
        results = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]"
            if item_path in self.state:
                results.append(self.state[item_path])
            else:
                call = _call(sc, node, item_path, {**args, node.map: item}, remaining)
                call["group"] = [path, len(items)]
                self.decision.ready.append(call)
        if len(results) < len(items):
            return _PENDING
        names = sc.ops[node.name].outputs
        values[node.name] = {o: [r.get(o) for r in results] for o in names}
        return _DONE

    def _subflow(
        self,
        sc: Scope,
        node: NodeSpec,
        path: str,
        values: dict[str, Mapping[str, Any]],
        remaining: int,
    ) -> str:
        """Walk the body's iterations that have run, and the current one."""
        assert node.workflow is not None
        body = sc.children[node.name]
        inputs = dict(node.workflow.defaults)
        inputs.update({name: _pick(values, src) for name, src in node.inputs.items()})
        loop = node.loop
        iteration = 1
        while True:
            result = self.scope(body, f"{path}#{iteration}/", inputs, remaining - 1)
            if not result.complete:
                return _PENDING
            outputs = {name: _pick(result.values, src) for name, src in body.wf.outputs.items()}
            again = loop is not None and iteration < loop.max_iterations
            if again and loop is not None and loop.until is not None:
                again = not loop.until.evaluate(_value(result.values, loop.until.ref))
            if not again:
                break
            inputs = {**inputs, **{k: v for k, v in outputs.items() if k in body.wf.inputs}}
            iteration += 1
        if loop is not None:
            outputs[LOOP_OUTPUT] = iteration
        values[node.name] = outputs
        return _DONE


def _value(values: Mapping[str, Mapping[str, Any]], ref: str) -> Any:
    target, output = parse_ref(ref)
    outs = values.get(target)
    return None if outs is None else outs.get(output)


def _pick(values: Mapping[str, Mapping[str, Any]], source: Source) -> Any:
    """The first alternative whose node ran and produced that output (None if none did)."""
    for ref in alternatives(source):
        target, output = parse_ref(ref)
        outs = values.get(target)
        if outs is not None and output in outs:
            return outs[output]
    return None


def _dead(source: Source, status: Mapping[str, str]) -> bool:
    """True when every alternative of an input comes from a skipped node."""
    targets = [parse_ref(ref)[0] for ref in alternatives(source)]
    return all(t != INPUTS and status.get(t) == _SKIPPED for t in targets)


def _call(sc: Scope, node: NodeSpec, path: str, args: dict[str, Any], remaining: int) -> StepCall:
    op = sc.ops[node.name]
    call = _base_call(sc, node, op, path, args, remaining)
    if node.outputs:
        call["outputs"] = list(node.outputs)
    if op.kind == "wait":
        call["on_timeout"] = "branch" if timeout_handled(sc.wf, node.name) else "fail"
    return call


def _base_call(
    sc: Scope, node: NodeSpec, op: OpSpec, path: str, args: dict[str, Any], remaining: int
) -> StepCall:
    call: StepCall = {
        "path": path,
        "op": op.name,
        "kind": op.kind,
        "args": {**args, **node.params},
        "classes": sc.classes[node.name],
        "retries": op.retries if node.retries is None else node.retries,
        "timeout": node.timeout,
        "remaining": max(1, remaining),
        "group": None,
        "sensitivity": sc.levels.get(node.name),
    }
    if node.name in sc.rules:
        call["rule"] = sc.rules[node.name]
    if op.runtime:
        call["runtime"] = op.runtime
    return call


def decide(workflow: CompiledWorkflow, state: Outputs) -> Decision:
    """The steps ready to run now, the nodes ruled out, and -- once every node has run or
    been ruled out -- the workflow's outputs. Steps already in ``state`` are never ready."""
    walker = _Walker(state, workflow.max_map_items)
    root = workflow.root
    result = walker.scope(root, "", state.get(INPUTS, {}), 0)
    decision = walker.decision
    if result.complete:
        decision.finished = True
        decision.outputs = {
            name: _pick(result.values, source) for name, source in root.wf.outputs.items()
        }
    elif not decision.ready:
        # Nothing running could make progress: a bug, or a state that lost a step's outputs.
        raise ReadinessError(root.wf.name, "cannot make progress: no step is ready")
    return decision
