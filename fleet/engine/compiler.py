"""Compile a validated workflow into the form the engine decides from on every step.

A workflow is compiled once per process and cached by the digest of its JSON: the
topological order of every scope (the workflow and each sub-workflow body), each node's
dependencies among its siblings, the classes each op node may run on, and each node's
*height* (the longest chain of steps from it to the end of its scope, for SLA budgets).
The JSON itself is stored once per workflow in Redis under its digest, so a step's message
carries a 32-character digest instead of the whole graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx

from fleet.config import FleetConfig
from fleet.constants import CELERY_OP_PREFIX, INPUTS, WAIT_OP_PREFIX
from fleet.sdk.registry import OpSpec, Registry
from fleet.workflow.model import NodeSpec, WorkflowSpec, parse_ref
from fleet.workflow.rules import constraint_note, dependency_graph, eligible_classes


@dataclass(frozen=True)
class Scope:
    """One workflow body, ready to be walked: nodes in dependency order and what they read."""

    wf: WorkflowSpec
    order: tuple[NodeSpec, ...]
    deps: dict[str, frozenset[str]]
    height: dict[str, int]
    classes: dict[str, list[str]]  # op node -> eligible classes, preferred first
    ops: dict[str, OpSpec]  # op node -> its op
    children: dict[str, Scope] = field(default_factory=dict)  # sub-workflow node -> body
    levels: dict[str, str] = field(default_factory=dict)  # op node -> its data sensitivity
    rules: dict[str, str] = field(default_factory=dict)  # op node -> what narrowed its classes
    # op node -> the op nodes (no map) that read it and nothing else of their scope: they
    # become ready, or are ruled out, when it ends -- and only then (see ``only_after``)
    sole: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledWorkflow:
    spec: WorkflowSpec
    root: Scope
    max_map_items: int = 10_000

    @cached_property
    def spec_json(self) -> str:
        return spec_json(self.spec)

    @cached_property
    def digest(self) -> str:
        return digest_of(self.spec_json)

    @cached_property
    def senders_alone(self) -> frozenset[str]:
        """The steps that send their successors in their record (:func:`sends_alone`)."""
        root = self.root
        found = set()
        for name, readers in _readers(root).items():
            sole = root.sole.get(name, ())
            if not readers or any(r not in sole for r in readers):
                continue
            # a wait (no message) or a `celery:` step (another task's message): sent as always
            ops = [root.wf.node(r).op or "" for r in readers]
            if not any(op.startswith((WAIT_OP_PREFIX, CELERY_OP_PREFIX)) for op in ops):
                found.add(name)
        return frozenset(found)


def spec_json(spec: WorkflowSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _deps(node: NodeSpec, siblings: set[str]) -> frozenset[str]:
    found = set()
    for _, ref in node.refs():
        target = parse_ref(ref)[0]
        if target != INPUTS and target in siblings:
            found.add(target)
    return frozenset(found)


def compile_scope(
    wf: WorkflowSpec, cfg: FleetConfig, registry: Registry, sensitivity: str | None = None
) -> Scope:
    graph = dependency_graph(wf)
    position = {n.name: i for i, n in enumerate(wf.nodes)}
    names = list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    order = tuple(wf.node(name) for name in names)
    siblings = set(names)
    deps = {node.name: _deps(node, siblings) for node in order}
    height: dict[str, int] = {}
    for name in reversed(names):
        below = [height[s] for s in graph.successors(name)]
        height[name] = 1 + max(below, default=0)
    classes, ops, children, levels, rules = {}, {}, {}, {}, {}
    for node in order:
        if node.workflow is not None:
            inner = node.sensitivity or wf.sensitivity or sensitivity
            children[node.name] = compile_scope(node.workflow, cfg, registry, inner)
        elif node.op is not None:
            op = registry.get(node.op)
            ops[node.name] = op
            level = node.sensitivity or wf.sensitivity or sensitivity
            classes[node.name] = eligible_classes(node, op, cfg, level)
            if level is not None:
                levels[node.name] = level
            if note := constraint_note(node, op, cfg, level):
                rules[node.name] = note
    sole: dict[str, list[str]] = {}
    for node in order:
        if node.op is not None and node.map is None and len(deps[node.name]) == 1:
            (parent,) = deps[node.name]
            sole.setdefault(parent, []).append(node.name)
    lone = {p: tuple(c) for p, c in sole.items() if p in ops and wf.node(p).map is None}
    return Scope(wf, order, deps, height, classes, ops, children, levels, rules, lone)


def only_after(workflow: CompiledWorkflow, path: str) -> list[str]:
    """The steps that step ``path`` alone makes ready (or rules out) when it ends: op nodes of
    its scope instance that read it and nothing else of their scope. Their claims can be
    taken as the step records its outputs (one round trip fewer): no other step can make
    them ready. None for a map item, whose node ends with its last item."""
    *scopes, name = path.split("/")
    scope = workflow.root
    for part in scopes:  # "loop#2": the second iteration of node loop's body
        child = scope.children.get(part.partition("#")[0])
        if child is None:
            return []
        scope = child
    prefix = path[: len(path) - len(name)]
    return [prefix + c for c in scope.sole.get(name, ())]


def sends_alone(workflow: CompiledWorkflow, path: str) -> bool:
    """Whether everything step ``path`` makes ready when it ends is known as it begins: a
    node of the workflow's top level whose every reader reads it alone (``only_after``).
    Such a step sends its successors in the round trip that records it: what they need is
    its own outputs and those recorded before it began, and no other step can make them
    ready. A join, a map or a sub-workflow among its readers: the state is read back after
    the record, as always."""
    return path in workflow.senders_alone


def _readers(scope: Scope) -> dict[str, list[str]]:
    """Each node of ``scope`` -> the nodes of the scope that read it."""
    found: dict[str, list[str]] = {name: [] for name in scope.deps}
    for name, deps in scope.deps.items():
        for dep in deps:
            found.setdefault(dep, []).append(name)
    return found


def may_end(workflow: CompiledWorkflow, path: str) -> bool:
    """Whether the run may be complete when step ``path`` ends: a node of the workflow's top
    level (not a map item, not in a loop's body) that no other node reads. Such a step asks
    for the run's state as it begins, and ends the run as it records if that state and its
    own outputs complete it (one round trip fewer for a one-step run, or a chain's end)."""
    if any(mark in path for mark in "/#["):  # in a sub-workflow's body, or a map's item
        return False
    return not any(path in deps for deps in workflow.root.deps.values())


def compile_workflow(spec: WorkflowSpec, cfg: FleetConfig, registry: Registry) -> CompiledWorkflow:
    """Compile a workflow that :func:`fleet.workflow.validate.validate` accepted."""
    return CompiledWorkflow(spec, compile_scope(spec, cfg, registry), cfg.max_map_items)
