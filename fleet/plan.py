"""The run-time planner: from what has run so far, decide the next segment of steps.

A run's state is an *envelope* (outputs of finished nodes by path, and the paths skipped) plus
a stack of *frames*, one per sub-workflow (agent / loop body) being run. Node paths are
``name`` at the top level and ``loop#2/name`` inside the second iteration of node ``loop``.

Each call to :func:`advance` returns either the next segment -- levels of steps whose inputs
and conditions are all decidable now -- or the workflow's final outputs. Conditions on outputs
that this segment will produce are decided by the next call, which is why a compiled run
ends every segment with an ``advance`` task. This module is pure: no Celery, no Redis.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypedDict

import networkx as nx

from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.model import INPUTS, NodeSpec, WorkflowSpec, alternatives, parse_ref
from fleet.ops import Registry
from fleet.validate import LOOP_OUTPUT, dependency_graph, eligible_classes

MAP_MARK = "[*]"  # outputs[path + MAP_MARK] = {"count": n} once a mapped node is expanded


class Envelope(TypedDict):
    outputs: dict[str, dict[str, Any]]
    skipped: list[str]


class Frame(TypedDict):
    node: str
    iteration: int


class StepCall(TypedDict):
    """Everything a worker needs to run one op node; travels in the task's kwargs."""

    path: str
    op: str
    kind: str
    inputs: dict[str, list[list[str]]]  # input -> alternatives [[node path, output], ...]
    params: dict[str, Any]
    classes: list[str]  # eligible classes, preferred first
    retries: int
    timeout: float | None
    remaining: int  # steps of this scope still to run, this one included (SLA budgeting)


@dataclass
class Plan:
    envelope: Envelope
    frames: list[Frame]
    levels: list[list[StepCall]] = field(default_factory=list)
    finished: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)


def new_envelope(inputs: dict[str, Any]) -> Envelope:
    return {"outputs": {INPUTS: dict(inputs)}, "skipped": []}


def merge_envelopes(parts: list[Envelope]) -> Envelope:
    """Join the envelopes of parallel branches (each holds the common prefix plus its own)."""
    merged: Envelope = {"outputs": {}, "skipped": []}
    seen: set[str] = set()
    for part in parts:
        merged["outputs"].update(part["outputs"])
        for path in part["skipped"]:
            if path not in seen:
                seen.add(path)
                merged["skipped"].append(path)
    return merged


def lookup(env: Envelope, alts: list[list[str]]) -> tuple[bool, Any]:
    """The first alternative that has run: (found, value)."""
    for path, output in alts:
        outs = env["outputs"].get(path)
        if outs is not None and output in outs:
            return True, outs[output]
    return False, None


def resolve_args(call: StepCall, env: Envelope) -> dict[str, Any]:
    """The keyword arguments a step's op is called with: its inputs' values, then params."""
    kwargs: dict[str, Any] = {}
    for name, alts in call["inputs"].items():
        found, value = lookup(env, alts)
        if not found:
            sources = ", ".join(f"{p}.{o}" for p, o in alts) or "no source left"
            raise ValueError(f"input '{name}' has no value ({sources})")
        kwargs[name] = value
    kwargs.update(call["params"])
    return kwargs


def scope(spec: WorkflowSpec, frames: list[Frame]) -> tuple[WorkflowSpec, str]:
    """The workflow being run at the top of the frame stack, and its path prefix."""
    wf, prefix = spec, ""
    for frame in frames:
        body = wf.node(frame["node"]).workflow
        if body is None:
            raise FleetError(f"frame '{frame['node']}' is not a sub-workflow node")
        prefix = f"{prefix}{frame['node']}#{frame['iteration']}/"
        wf = body
    return wf, prefix


def _addr(ref: str, prefix: str) -> list[str]:
    target, output = parse_ref(ref)
    return [prefix + target, output]


class _ScopePlanner:
    """Plans one workflow scope: which nodes run now, which are skipped, what waits."""

    def __init__(self, wf: WorkflowSpec, prefix: str, env: Envelope) -> None:
        self.wf, self.prefix, self.env = wf, prefix, env
        self.skipped = {p for p in env["skipped"] if p.startswith(prefix)}
        self.scheduled: list[NodeSpec] = []
        self.mapped: list[tuple[NodeSpec, int, Any]] = []  # (node, index, item)
        self.subflow: NodeSpec | None = None

    def _state(self, name: str) -> str:
        path = self.prefix + name
        if path in self.env["outputs"]:
            return "done"
        if path in self.skipped:
            return "skipped"
        return "scheduled" if any(n.name == name for n in self.scheduled) else "pending"

    def _skip(self, node: NodeSpec) -> None:
        path = self.prefix + node.name
        self.skipped.add(path)
        self.env["skipped"].append(path)

    def _deps(self, node: NodeSpec) -> set[str]:
        return {t for _, ref in node.refs() if (t := parse_ref(ref)[0]) != INPUTS}

    def _all_skipped(self, node: NodeSpec) -> bool:
        """True when some input has no alternative left that could produce a value."""
        for source in node.inputs.values():
            targets = [parse_ref(r)[0] for r in alternatives(source)]
            if all(t != INPUTS and self._state(t) == "skipped" for t in targets):
                return True
        return False

    def _collect_maps(self, registry: Registry) -> None:
        """A mapped node whose items have all run becomes done, its outputs lists."""
        outputs = self.env["outputs"]
        for node in self.wf.nodes:
            path = self.prefix + node.name
            if node.map is None or path in outputs or path + MAP_MARK not in outputs:
                continue
            count = outputs[path + MAP_MARK]["count"]
            items = [outputs.get(f"{path}[{i}]") for i in range(count)]
            if all(item is not None for item in items) and node.op in registry:
                names = registry.get(str(node.op)).outputs
                outputs[path] = {o: [item[o] for item in items if item] for o in names}

    def _expand(self, node: NodeSpec) -> None:
        assert node.map is not None
        path = self.prefix + node.name
        if path + MAP_MARK in self.env["outputs"]:
            return  # expanded in an earlier segment; collected once every item is done
        source = node.inputs[node.map]
        _, items = lookup(self.env, [_addr(r, self.prefix) for r in alternatives(source)])
        if not isinstance(items, list):
            raise FleetError(
                f"node '{path}': map input '{node.map}' is {type(items).__name__}, not a list"
            )
        self.env["outputs"][path + MAP_MARK] = {"count": len(items)}
        self.mapped.extend((node, i, item) for i, item in enumerate(items))
        if not items:  # nothing to run: done at once, with empty lists
            self._collect_maps(self.registry)

    def run(self, registry: Registry) -> None:
        self.registry = registry
        self._collect_maps(registry)
        graph = dependency_graph(self.wf)
        order = {n.name: i for i, n in enumerate(self.wf.nodes)}
        for name in nx.lexicographical_topological_sort(graph, key=order.__getitem__):
            node = self.wf.node(name)
            if self._state(name) != "pending":
                continue
            deps = {d: self._state(d) for d in self._deps(node)}
            if any(s == "pending" for s in deps.values()):
                continue
            if node.when is not None:
                target = parse_ref(node.when.ref)[0]
                if target != INPUTS and deps.get(target) == "scheduled":
                    continue  # decided once that node has run
                _, value = lookup(self.env, [_addr(node.when.ref, self.prefix)])
                if not node.when.evaluate(value):
                    self._skip(node)
                    continue
            if self._all_skipped(node):
                self._skip(node)
                continue
            if node.workflow is not None or node.map is not None:
                if "scheduled" in deps.values():
                    continue  # needs its inputs' values, not just their promise
                if node.map is not None:
                    self._expand(node)  # an empty list is done at once: dependents may run
                elif self.subflow is None:
                    self.subflow = node
                continue
            self.scheduled.append(node)

    def levels(self, cfg: FleetConfig, registry: Registry) -> list[list[StepCall]]:
        depth: dict[str, int] = {}
        levels: list[list[StepCall]] = []
        for node in self.scheduled:  # already in topological order
            within = [depth[d] for d in self._deps(node) if d in depth]
            depth[node.name] = 1 + max(within) if within else 0
            if depth[node.name] == len(levels):
                levels.append([])
            levels[depth[node.name]].append(self._call(node, cfg, registry))
        # Mapped items depend only on finished nodes (nothing scheduled depends on them yet):
        # they run in the first level, beside the other nodes that are ready now.
        items = [self._item_call(n, i, item, cfg, registry) for n, i, item in self.mapped]
        if items:
            if not levels:
                levels.append([])
            levels[0][:0] = items
        pending = sum(1 for n in self.wf.nodes if self._state(n.name) in ("pending", "scheduled"))
        for depth_index, level in enumerate(levels):
            for call in level:
                call["remaining"] = max(1, pending - depth_index)
        return levels

    def _item_call(
        self, node: NodeSpec, index: int, item: Any, cfg: FleetConfig, registry: Registry
    ) -> StepCall:
        assert node.map is not None
        call = self._call(node, cfg, registry)
        call["path"] = f"{call['path']}[{index}]"
        del call["inputs"][node.map]
        call["params"] = {**call["params"], node.map: item}
        return call

    def _call(self, node: NodeSpec, cfg: FleetConfig, registry: Registry) -> StepCall:
        assert node.op is not None
        op = registry.get(node.op)
        inputs = {}
        for name, source in node.inputs.items():
            alts = [_addr(r, self.prefix) for r in alternatives(source)]
            inputs[name] = [a for a in alts if a[0] not in self.skipped]
        return {
            "path": self.prefix + node.name,
            "op": op.name,
            "kind": op.kind,
            "inputs": inputs,
            "params": node.params,
            "classes": eligible_classes(node, op, cfg),
            "retries": op.retries if node.retries is None else node.retries,
            "timeout": node.timeout,
            "remaining": 1,
        }

    def outputs(self) -> dict[str, Any]:
        result = {}
        for name, source in self.wf.outputs.items():
            _, result[name] = lookup(
                self.env, [_addr(r, self.prefix) for r in alternatives(source)]
            )
        return result

    def complete(self) -> bool:
        return all(self._state(n.name) in ("done", "skipped") for n in self.wf.nodes)


def _resolve_inputs(node: NodeSpec, prefix: str, env: Envelope) -> dict[str, Any]:
    assert node.workflow is not None
    values = dict(node.workflow.defaults)
    for name, source in node.inputs.items():
        _, values[name] = lookup(env, [_addr(r, prefix) for r in alternatives(source)])
    return values


def advance(
    spec: WorkflowSpec,
    frames: list[Frame],
    env: Envelope,
    cfg: FleetConfig,
    registry: Registry,
) -> Plan:
    """Decide what runs next. ``frames`` and ``env`` are copied, never changed in place."""
    env = copy.deepcopy(env)
    frames = [dict(f) for f in frames]  # type: ignore[misc]
    while True:
        wf, prefix = scope(spec, frames)
        planner = _ScopePlanner(wf, prefix, env)
        planner.run(registry)
        if planner.scheduled or planner.mapped:
            return Plan(env, frames, planner.levels(cfg, registry))
        if planner.subflow is not None:
            node = planner.subflow
            env["outputs"][f"{prefix}{node.name}#1/{INPUTS}"] = _resolve_inputs(node, prefix, env)
            frames.append({"node": node.name, "iteration": 1})
            continue
        if not planner.complete():
            stuck = [n.name for n in wf.nodes if planner._state(n.name) == "pending"]
            raise FleetError(f"workflow '{wf.name}' cannot make progress at {stuck}")
        outputs = planner.outputs()
        if not frames:
            return Plan(env, frames, finished=True, outputs=outputs)
        _finish_frame(spec, frames, env, outputs, prefix)


def _finish_frame(
    spec: WorkflowSpec, frames: list[Frame], env: Envelope, outputs: dict[str, Any], prefix: str
) -> None:
    """A sub-workflow iteration ended: repeat it, or hand its outputs to the parent node."""
    frame = frames[-1]
    parent, parent_prefix = scope(spec, frames[:-1])
    node = parent.node(frame["node"])
    body = node.workflow
    assert body is not None
    k = frame["iteration"]
    loop = node.loop
    again = loop is not None and k < loop.max_iterations
    if again and loop is not None and loop.until is not None:
        _, value = lookup(env, [_addr(loop.until.ref, prefix)])
        again = not loop.until.evaluate(value)
    if again:
        previous = env["outputs"][f"{prefix}{INPUTS}"]
        fed_back = {k2: v for k2, v in outputs.items() if k2 in body.inputs}
        frame["iteration"] = k + 1
        env["outputs"][f"{parent_prefix}{node.name}#{k + 1}/{INPUTS}"] = {**previous, **fed_back}
        return
    result = dict(outputs)
    if loop is not None:
        result[LOOP_OUTPUT] = k
    env["outputs"][parent_prefix + node.name] = result
    frames.pop()
