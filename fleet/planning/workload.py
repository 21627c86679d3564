"""A workload for the planner: workflows with arrival rates and SLAs, each flattened into a
graph of planning steps with their units and the bytes on each edge.

An op the catalogue splits (``[split]``: an LLM call as prefill then decode) becomes two steps
joined by an edge that carries the handed-over state (the KV cache): the planner may put them
on different classes when that is cheaper. A loop's body is planned
once (its expected iteration count is 1 for the agents here: the second round calls nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from fleet.errors import ConfigError
from fleet.planning.catalogue import Split
from fleet.workflow.loader import load_workflow
from fleet.workflow.model import WorkflowSpec, alternatives

EDGE_BYTES = 2_000  # a step's JSON outputs


@dataclass(frozen=True)
class Step:
    path: str  # node path, with ":prefill" / ":decode" for the two halves of an LLM call
    op: str
    units: float


@dataclass
class Flow:
    """One workflow of the workload: its planning graph, rate (per s) and p95 SLA (s)."""

    name: str
    rate: float
    sla_s: float
    graph: nx.DiGraph = field(repr=False)
    sensitivity: str | None = None

    def steps(self) -> list[Step]:
        return [self.graph.nodes[n]["step"] for n in nx.topological_sort(self.graph)]

    def paths(self) -> list[list[str]]:
        """Every path from a source to a sink (the latency constraints' candidates)."""
        sources = [n for n in self.graph if self.graph.in_degree(n) == 0]
        sinks = [n for n in self.graph if self.graph.out_degree(n) == 0]
        found: list[list[str]] = []
        for s in sources:
            for t in sinks:
                found += [list(p) for p in nx.all_simple_paths(self.graph, s, t)] or (
                    [[s]] if s == t else []
                )
        return found


def _refs(sources: dict[str, Any]) -> set[str]:
    out = set()
    for source in sources.values():
        for alt in alternatives(source):
            head = str(alt).split(".", 1)[0]
            if head != "inputs":
                out.add(head)
    return out


def _add(
    g: nx.DiGraph,
    spec: WorkflowSpec,
    prefix: str,
    entry: set[str],
    tokens: dict[str, Any],
    splits: dict[str, Split],
) -> dict[str, set[str]]:
    """Add ``spec``'s nodes to ``g``; returns node name -> the graph nodes that end it."""
    ends: dict[str, set[str]] = {}
    for node in spec.nodes:
        path = f"{prefix}{node.name}"
        deps = (
            set().union(*(ends.get(r, set()) for r in _refs(node.inputs))) if node.inputs else set()
        )
        if node.when is not None and node.when.ref.split(".")[0] in ends:
            deps |= ends[node.when.ref.split(".")[0]]
        uses_inputs = any(
            str(a).startswith("inputs.") for s in node.inputs.values() for a in alternatives(s)
        )
        if not deps and (uses_inputs or not node.inputs):
            deps = set(entry)
        if node.workflow is not None:
            inner = _add(g, node.workflow, f"{path}/", deps, tokens, splits)
            ends[node.name] = set().union(*inner.values()) if inner else deps
            continue
        op = node.op or ""
        split = splits.get(op)
        if split is not None:
            one, two = split.parts
            units = float(tokens.get(path, {}).get("prompt", split.default_units))
            later = float(node.params.get(split.units_param, split.default_param_units))
            first, last = f"{path}:{one.split('.')[-1]}", f"{path}:{two.split('.')[-1]}"
            g.add_node(first, step=Step(first, one, units))
            g.add_node(last, step=Step(last, two, later))
            g.add_edge(first, last, bytes=split.handover_bytes_per_unit * units)
        else:
            g.add_node(path, step=Step(path, op, float(tokens.get(path, {}).get("units", 1))))
            first = last = path
        for d in deps:
            g.add_edge(d, first, bytes=EDGE_BYTES)
        ends[node.name] = {last}
    return ends


def flatten(
    spec: WorkflowSpec, splits: dict[str, Split], tokens: dict[str, Any] | None = None
) -> nx.DiGraph:
    g: nx.DiGraph = nx.DiGraph()
    _add(g, spec, "", set(), tokens or {}, splits)
    return g


def load_workload(path: Path, splits: dict[str, Split] | None = None) -> list[Flow]:
    """A workload file: ``workflows: [{file, rate, sla_p95_s, [sensitivity], [tokens]}]``;
    ``file`` is a path, relative to the workload file, or a packaged example's name."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the workload: {exc}") from None
    flows = []
    examples = Path(__file__).resolve().parents[1] / "examples"
    for i, w in enumerate((doc or {}).get("workflows") or []):
        where = f"{path}: workflows[{i}]"
        missing = [k for k in ("file", "rate", "sla_p95_s") if k not in w]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        file = Path(w["file"])
        if not file.is_absolute():
            file = path.parent / file if (path.parent / file).exists() else examples / file
        spec = load_workflow(file)
        rate, sla = float(w["rate"]), float(w["sla_p95_s"])
        if rate <= 0 or sla <= 0:
            raise ConfigError(f"{where}: rate and sla_p95_s must be positive")
        graph = flatten(spec, splits or {}, w.get("tokens"))
        flows.append(Flow(spec.name, rate, sla, graph, w.get("sensitivity") or spec.sensitivity))
    if not flows:
        raise ConfigError(f"{path}: no workflows")
    return flows
