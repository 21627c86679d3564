"""Semantic validation of a workflow before anything is sent to the broker.

Every problem names the node (and file line when the workflow came from a file). All problems
are collected, not just the first, so a user fixes a file in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import networkx as nx

from fleet.config import FleetConfig
from fleet.constants import CELERY_OP_PREFIX, INPUTS
from fleet.errors import Problem, UnknownOpError, WorkflowValidationError
from fleet.sdk.registry import OpSpec, Registry
from fleet.workflow.model import NAME_RE, NodeSpec, WorkflowSpec, alternatives, parse_ref
from fleet.workflow.rules import LOOP_OUTPUT, dependency_graph, eligible_classes
from fleet.workflow.split import expand_splits
from fleet.workflow.waits import problems as wait_problems


def node_outputs(node: NodeSpec, registry: Registry) -> tuple[str, ...] | None:
    """Output names a node produces, or None when unknown (unknown op)."""
    if node.workflow is not None:
        extra = (LOOP_OUTPUT,) if node.loop is not None else ()
        return (*node.workflow.outputs.keys(), *extra)
    if node.op and node.op in registry:
        return (*registry.get(node.op).outputs, *(node.outputs or ()))
    return None


class _Checker:
    def __init__(
        self,
        cfg: FleetConfig,
        registry: Registry,
        file: str | None,
        sensitivity: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.file = file
        self.sensitivity = sensitivity  # inherited from the enclosing workflows
        self.problems: list[Problem] = []

    def add(self, msg: str, node: NodeSpec | None = None, field: str | None = None) -> None:
        self.problems.append(
            Problem(
                msg,
                node=node.name if node else None,
                field=field,
                line=node.line if node else None,
                file=self.file,
            )
        )

    def workflow(self, wf: WorkflowSpec) -> None:
        self.sensitivity = wf.sensitivity or self.sensitivity
        names = self._names(wf)
        for node in wf.nodes:
            self._node(node, wf, names)
        for out, source in wf.outputs.items():
            for ref in alternatives(source):
                self._ref(ref, wf, names, None, f"outputs.{out}")
        self._cycles(wf, names)

    def _names(self, wf: WorkflowSpec) -> dict[str, NodeSpec]:
        names: dict[str, NodeSpec] = {}
        for node in wf.nodes:
            if not NAME_RE.match(node.name):
                self.add("invalid name: use letters, digits, '_' and '-'", node, "name")
            elif node.name == INPUTS:
                self.add(f"'{INPUTS}' is reserved for the workflow's inputs", node, "name")
            elif node.name in names:
                other = names[node.name].line
                where = f" (first defined on line {other})" if other else ""
                self.add(f"duplicate node name{where}", node, "name")
            else:
                names[node.name] = node
        for inp in wf.inputs:
            if not NAME_RE.match(inp):
                self.add(f"workflow input '{inp}' has an invalid name")
        return names

    def _node(self, node: NodeSpec, wf: WorkflowSpec, names: dict[str, NodeSpec]) -> None:
        for field, ref in node.refs():
            self._ref(ref, wf, names, node, field)
        try:
            json.dumps(node.params)
        except (TypeError, ValueError) as exc:
            self.add(f"params must be JSON values: {exc}", node, "params")
        if node.workflow is not None:
            self._subflow(node)
        elif node.op is None:
            self.add("a node needs an 'op' (or a 'workflow' for an agent node)", node)
        else:
            self._op_node(node)

    def _subflow(self, node: NodeSpec) -> None:
        assert node.workflow is not None
        if node.op is not None:
            self.add("a node has either 'op' or 'workflow', not both", node)
        if node.kind not in (None, "agent"):
            self.add(f"kind must be 'agent' for a node with a workflow, not '{node.kind}'", node)
        body = node.workflow
        required = set(body.inputs) - set(body.defaults)
        missing = required - set(node.inputs)
        for name in sorted(missing):
            self.add(
                f"sub-workflow input '{name}' is not provided (a reference in the node's "
                f"inputs, or a constant in the sub-workflow's defaults: {{{name}: ...}})",
                node,
                "inputs",
            )
        for name in sorted(set(node.inputs) - set(body.inputs)):
            self.add(f"sub-workflow '{body.name}' has no input '{name}'", node, f"inputs.{name}")
        if node.params:
            self.add(
                "agent nodes take 'inputs', not 'params' (a constant input: the "
                "sub-workflow's defaults)",
                node,
                "params",
            )
        if node.map is not None:
            self.add("'map' applies to op nodes, not agent nodes", node, "map")
        sub = _Checker(self.cfg, self.registry, self.file, node.sensitivity or self.sensitivity)
        sub.workflow(body)
        for p in sub.problems:
            inner = f"{node.name}/{p.node}" if p.node else node.name
            self.problems.append(Problem(p.message, inner, p.field, p.line, p.file))
        if node.loop is not None and node.loop.until is not None:
            ref = node.loop.until.ref
            body_names = {n.name: n for n in body.nodes}
            self._ref(ref, body, body_names, node, "loop.until", scope="loop body")

    def _op_node(self, node: NodeSpec) -> None:
        assert node.op is not None
        if node.loop is not None:
            self.add("'loop' needs a 'workflow' body to repeat", node, "loop")
        if node.map is not None and node.map not in node.inputs:
            self.add(f"map names '{node.map}', which is not one of its inputs", node, "map")
        try:
            op = self.registry.get(node.op)
        except UnknownOpError as exc:
            self.add(str(exc), node, "op")
            return
        if node.kind is not None and node.kind != op.kind:
            self.add(f"kind '{node.kind}' does not match op {op.name} (kind {op.kind})", node)
        if node.split is not None:  # not expanded by fleet.workflow.split: say why
            why = (
                "'split' and 'map' do not go together"
                if op.split is not None
                else f"op {op.name} does not split (split: applies to ops that declare their "
                f"two parts, such as LLM generation)"
            )
            self.add(why, node, "split")
        if node.outputs is not None:
            self._declared_outputs(node, op)
        self._params(node, op)
        if op.kind == "wait":  # kept by the engine: no class runs it
            for message, field in wait_problems(node):
                self.add(message, node, field)
            return
        self._classes(node, op)

    def _params(self, node: NodeSpec, op: OpSpec) -> None:
        """What the node gives the op (inputs and params) against what the op takes."""
        given = set(node.inputs) | set(node.params)
        for both in sorted(set(node.inputs) & set(node.params)):
            self.add(f"'{both}' is given both as an input and as a param", node)
        for name in op.required:
            if name not in given:
                self.add(f"op {op.name} needs '{name}' (as an input or a param)", node, "inputs")
        if not op.accepts_any:
            for name in sorted(given - set(op.params)):
                known = ", ".join(op.params) or "none"
                self.add(f"op {op.name} takes no '{name}' (it takes: {known})", node, name)

    def _declared_outputs(self, node: NodeSpec, op: OpSpec) -> None:
        """``outputs:`` names the dict keys of a ``celery:`` step's result; ops declare
        their own."""
        if not op.name.startswith(CELERY_OP_PREFIX):
            self.add(
                f"'outputs' is for celery: steps; op {op.name} declares its own "
                f"({', '.join(op.outputs)})",
                node,
                "outputs",
            )
        for name in node.outputs or ():
            if not NAME_RE.match(name) or name in op.outputs:
                self.add(f"output name '{name}' is invalid or taken", node, "outputs")
        if node.map is not None:
            self.add("a map's outputs are lists of 'result': leave 'outputs' out", node)

    def _classes(self, node: NodeSpec, op: OpSpec) -> None:
        configured = list(self.cfg.classes)
        for c in node.classes or []:
            if c not in configured:
                self.add(f"class '{c}' is not configured ({', '.join(configured)})", node)
        level = node.sensitivity or self.sensitivity
        eligible = eligible_classes(node, op, self.cfg, level)
        if not eligible and level is not None and eligible_classes(node, op, self.cfg):
            trusted = [c for c, s in self.cfg.classes.items() if level in s.trusted_for]
            self.add(
                f"sensitivity '{level}': no class trusted for it can run op {op.name} "
                f"(trusted: {', '.join(trusted) or 'none'}; set trusted_for on a class)",
                node,
                "sensitivity",
            )
        elif not eligible:
            can = "any class" if op.classes == ("*",) else ", ".join(op.classes)
            self.add(
                f"no configured class can run op {op.name} (it runs on: {can}; "
                f"configured: {', '.join(configured)})",
                node,
            )
        elif node.prefer in configured and node.prefer not in eligible:
            # (a hint naming a class this deployment lacks is ignored: workflows travel)
            self.add(self._why_not(node.prefer, node, op, level), node, "prefer")

    def _why_not(self, cls: str, node: NodeSpec, op: OpSpec, level: str | None) -> str:
        """Which rule keeps the preferred class out: the op, the node's classes, or trust."""
        if cls in eligible_classes(node, op, self.cfg):  # it can run the op: trust rules it out
            return (
                f"preferred class '{cls}' is not trusted for sensitivity '{level}' "
                f"(classes.{cls}.trusted_for does not list it)"
            )
        if node.classes and cls not in node.classes:
            listed = ", ".join(node.classes)
            return f"preferred class '{cls}' is not among the node's classes ({listed})"
        return f"preferred class '{cls}' cannot run op {op.name}"

    def _ref(
        self,
        ref: str,
        wf: WorkflowSpec,
        names: dict[str, NodeSpec],
        node: NodeSpec | None,
        field: str,
        scope: str = "workflow",
    ) -> None:
        try:
            target, output = parse_ref(ref)
        except ValueError as exc:
            self.add(str(exc), node, field)
            return
        if target == INPUTS:
            if output not in wf.inputs:
                self.add(f"'{ref}': the {scope} has no input '{output}'", node, field)
            return
        if target not in names:
            self.add(f"'{ref}' refers to unknown node '{target}'", node, field)
            return
        outputs = node_outputs(names[target], self.registry)
        if outputs is not None and output not in outputs:
            have = ", ".join(outputs) or "none"
            self.add(
                f"'{ref}': node '{target}' has no output '{output}' (has: {have})", node, field
            )

    def _cycles(self, wf: WorkflowSpec, names: dict[str, NodeSpec]) -> None:
        graph = dependency_graph(wf)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join([str(a) for a, _ in cycle] + [str(cycle[0][0])])
        first = names.get(str(cycle[0][0]))
        self.add(
            f"unbounded cycle {path}: edges must not loop back; repeat steps with a node "
            "that has a 'workflow' body and 'loop: {max_iterations: N}'",
            first,
        )


def problems(spec: WorkflowSpec, cfg: FleetConfig, registry: Registry) -> list[Problem]:
    """Every problem of ``spec`` as it runs (``split:`` nodes expanded into their parts)."""
    checker = _Checker(cfg, registry, spec.source)
    checker.workflow(expand_splits(spec, registry, cfg.splits))
    return checker.problems


def validate(spec: WorkflowSpec, cfg: FleetConfig, registry: Registry) -> None:
    """Raise :class:`WorkflowValidationError` listing every problem, or return quietly."""
    found = problems(spec, cfg, registry)
    if found:
        raise WorkflowValidationError(found, workflow=spec.name)


def check_inputs(
    spec: WorkflowSpec,
    given: Iterable[str],
    inputs_file: str | None = None,
    lines: dict[str, int] | None = None,
) -> None:
    """Every declared input given (or defaulted), none unknown. A missing one points at the
    workflow's ``inputs:`` line; an unknown one at its line in ``inputs_file`` if it came
    from one."""
    given = set(given)
    found = [
        Problem(f"missing workflow input '{name}'", file=spec.source, line=spec.inputs_line)
        for name in spec.inputs
        if name not in given and name not in spec.defaults
    ]
    known = ", ".join(spec.inputs) or "none"
    found += [
        Problem(
            f"unknown workflow input '{name}' (inputs: {known})",
            file=inputs_file if (lines or {}).get(name) else None,
            line=(lines or {}).get(name),
        )
        for name in sorted(given - set(spec.inputs))
    ]
    if found:
        raise WorkflowValidationError(found, workflow=spec.name)


def check_size(inputs: dict[str, Any], limit: int) -> None:
    """Refuse inputs too large to travel in messages, naming the largest, before sending."""
    sizes = {name: len(json.dumps(value, default=str)) for name, value in inputs.items()}
    if sum(sizes.values()) > limit:
        big = max(sizes, key=sizes.__getitem__)
        raise ValueError(
            f"workflow inputs are {sum(sizes.values())} bytes (limit {limit}, max_value_bytes); "
            f"the largest is '{big}' ({sizes[big]} bytes): pass large data by reference"
        )
