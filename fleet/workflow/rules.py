"""The rules a workflow runs by, shared by its validation and the engine: which classes may run
an op node (and, in words, what kept the others out), the dependency graph of a scope, and
the extra output a loop node gains.
"""

from __future__ import annotations

import networkx as nx

from fleet.config import FleetConfig
from fleet.sdk.registry import OpSpec
from fleet.workflow.model import NodeSpec, WorkflowSpec, parse_ref

LOOP_OUTPUT = "iterations"  # extra output of a loop node: how many times its body ran


def eligible_classes(
    node: NodeSpec, op: OpSpec, cfg: FleetConfig, sensitivity: str | None = None
) -> list[str]:
    """Classes that may run this op node, preferred first.

    A node's ``classes`` restricts the op's classes and, in its own order, says which it
    prefers; ``prefer`` puts one class first. A ``sensitivity`` (the node's, else its
    workflow's) leaves only the classes trusted for it: routing chooses among these alone,
    so no fallback can cross the constraint.
    """
    eligible = op.eligible(cfg.classes)
    if sensitivity is not None:
        eligible = [c for c in eligible if sensitivity in cfg.classes[c].trusted_for]
    if node.classes is not None:
        eligible = [c for c in node.classes if c in eligible]
    if node.prefer in eligible:
        eligible.remove(node.prefer)
        eligible.insert(0, node.prefer)
    return eligible


def constraint_note(
    node: NodeSpec, op: OpSpec, cfg: FleetConfig, sensitivity: str | None = None
) -> str:
    """The rules that keep classes able to run the op out of the node's choice, in words
    (routing's reasons end with it: `fleet trace --why`); "" when none does."""
    able = op.eligible(cfg.classes)
    notes = []
    if sensitivity is not None:
        untrusted = [c for c in able if sensitivity not in cfg.classes[c].trusted_for]
        if untrusted:
            notes.append(f"sensitivity '{sensitivity}' rules out {', '.join(untrusted)}")
        able = [c for c in able if c not in untrusted]
    if node.classes is not None:
        left = [c for c in able if c not in node.classes]
        if left:
            notes.append(
                f"the node's classes ({', '.join(node.classes)}) leave out {', '.join(left)}"
            )
    return "; ".join(notes)


def dependency_graph(wf: WorkflowSpec) -> nx.DiGraph:
    """Edges dep -> node for every reference between nodes of one workflow scope."""
    graph = nx.DiGraph()
    known = set(wf.node_names())
    graph.add_nodes_from(known)
    for node in wf.nodes:
        for _, ref in node.refs():
            try:
                target, _ = parse_ref(ref)
            except ValueError:
                continue
            if target in known:
                graph.add_edge(target, node.name)
    return graph
