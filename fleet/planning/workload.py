"""A workload for the planner: workflows with arrival rates and SLAs, each flattened into a
graph of planning steps with their units and the bytes on each edge.

An op the catalogue splits (``[split]``: an LLM call as prefill then decode) becomes two steps
joined by an edge that carries the handed-over state (the KV cache): the planner may put them
on different classes when that is cheaper. Conditional parts follow the workload's ``shape``:
a ``when:`` node runs with a chance, a loop's iterations past the first are unrolled, each with
the chance that keeps the stated mean, and a map node is widened to its stated items. The
planner loads each step by its chance; the simulator draws them per run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from fleet.constants import WAIT_OP_PREFIX
from fleet.errors import ConfigError, WorkflowValidationError
from fleet.paths import EXAMPLES
from fleet.planning.catalogue import Split
from fleet.workflow.loader import load_data_file, load_workflow
from fleet.workflow.model import NodeSpec, WorkflowSpec, alternatives

EDGE_BYTES = 2_000  # a step's JSON outputs


@dataclass(frozen=True)
class StepLoad:
    path: str  # node path, with ":prefill" / ":decode" for the two halves of an LLM call
    op: str
    units: float
    # what must hold for the step to run: conditions ("when:PATH") and loop iterations past
    # the first ("loop:PATH#K"), each drawn once per run with its chance (WorkflowLoad.chances)
    guards: tuple[str, ...] = ()
    chance: float = 1.0  # the probability that it runs (guards independent)


@dataclass(frozen=True)
class Shape:
    """How a workflow's conditional parts go, on average (the workload's ``shape:``): the
    chance that a node runs (a ``when:`` condition, or a node skipped with what it reads),
    a loop's mean iterations, a map's items. A chance's key is the node's path, or with a
    loop iteration past the first (``tools#2/call``) for that iteration only."""

    chance: dict[str, float] = field(default_factory=dict)
    loops: dict[str, float] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, where: str) -> Shape:
        raw = raw or {}
        unknown = set(raw) - {"chance", "loops", "maps"}
        if unknown:
            raise ConfigError(f"{where}: shape: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            shape = cls(
                {str(k): float(v) for k, v in (raw.get("chance") or {}).items()},
                {str(k): float(v) for k, v in (raw.get("loops") or {}).items()},
                {str(k): int(v) for k, v in (raw.get("maps") or {}).items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: shape: {exc}") from None
        for k, p in shape.chance.items():
            if not 0 <= p <= 1:
                raise ConfigError(f"{where}: shape.chance['{k}'] = {p}: a chance is 0 to 1")
        for k, n in {**shape.loops, **shape.maps}.items():
            if n < 0:
                raise ConfigError(f"{where}: shape: '{k}' = {n} must not be negative")
        return shape


@dataclass
class WorkflowLoad:
    """One workflow of the workload: its planning graph, rate (per s) and p95 SLA (s)."""

    name: str
    rate: float
    sla_s: float
    graph: nx.DiGraph = field(repr=False)
    sensitivity: str | None = None
    chances: dict[str, float] = field(default_factory=dict)  # guard -> its chance
    # the request kind of its runs: catalogue rules may time each kind apart (``kinds``)
    kind: str | None = None

    def steps(self) -> list[StepLoad]:
        return [self.graph.nodes[n]["step"] for n in nx.topological_sort(self.graph)]

    def steps_per_s(self) -> float:
        """Steps this workflow adds per second on average: its rate x the steps a run has."""
        return self.rate * sum(s.chance for s in self.steps())

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


def plain(path: str) -> str:
    """A step's path without loop iterations and map items: the shape's and the plan's key."""
    return re.sub(r"#\d+|\[\d+\]", "", path)


def _refs(sources: dict[str, Any]) -> set[str]:
    out = set()
    for source in sources.values():
        for alt in alternatives(source):
            head = str(alt).split(".", 1)[0]
            if head != "inputs":
                out.add(head)
    return out


@dataclass
class _Builder:
    """Flattens a workflow into the planning graph: sub-workflows inlined, loops unrolled
    (as many iterations as can run), maps widened, LLM calls split where the catalogue says."""

    g: nx.DiGraph
    tokens: dict[str, Any]
    splits: dict[str, Split]
    shape: Shape
    chances: dict[str, float] = field(default_factory=dict)

    def guard(self, name: str, chance: float) -> tuple[str, ...]:
        if chance >= 1:
            return ()
        self.chances[name] = chance
        return (name,)

    def scope(
        self, spec: WorkflowSpec, prefix: str, entry: set[str], guards: tuple[str, ...]
    ) -> dict[str, set[str]]:
        """Add ``spec``'s nodes; returns node name -> the graph nodes that end it."""
        ends: dict[str, set[str]] = {}
        for node in spec.nodes:
            path = f"{prefix}{node.name}"
            deps = set().union(*(ends.get(r, set()) for r in _refs(node.inputs)))
            if node.when is not None and node.when.ref.split(".")[0] in ends:
                deps |= ends[node.when.ref.split(".")[0]]
            uses_inputs = any(
                str(a).startswith("inputs.") for s in node.inputs.values() for a in alternatives(s)
            )
            if not deps and (uses_inputs or not node.inputs):
                deps = set(entry)
            mine = guards
            chance = self.shape.chance.get(path, self.shape.chance.get(plain(path), 1.0))
            if node.when is not None or chance < 1:
                mine += self.guard(f"when:{path}", chance)
            if node.workflow is not None:
                ends[node.name] = self.loop(node, path, deps, mine)
            else:
                ends[node.name] = self.op(node, path, deps, mine)
        return ends

    def loop(self, node: NodeSpec, path: str, deps: set[str], guards: tuple[str, ...]) -> set[str]:
        assert node.workflow is not None
        mean = self.shape.loops.get(plain(path), 1.0) if node.loop else 1.0
        most = node.loop.max_iterations if node.loop else 1
        entry = set(deps)
        for k in range(min(most, max(1, math.ceil(mean)))):
            mine = guards
            if k:  # iteration k+1 runs with the chance that keeps the mean
                mine += self.guard(f"loop:{path}#{k + 1}", min(1.0, max(0.0, mean - k)))
            inner = self.scope(node.workflow, f"{path}#{k + 1}/" if k else f"{path}/", entry, mine)
            entry = set().union(*inner.values()) if inner else entry
        return entry  # the last iteration's ends: the earlier ones come before them

    def op(self, node: NodeSpec, path: str, deps: set[str], guards: tuple[str, ...]) -> set[str]:
        width = self.shape.maps.get(plain(path), 1) if node.map else 1
        names = [path] if width == 1 else [f"{path}[{i}]" for i in range(width)]
        out = set()
        for name in names:
            first, last = self.add(node, name, guards)
            for d in deps:
                self.g.add_edge(d, first, bytes=EDGE_BYTES)
            out.add(last)
        return out

    def add(self, node: NodeSpec, path: str, guards: tuple[str, ...]) -> tuple[str, str]:
        op, key = node.op or "", plain(path)
        chance = math.prod(self.chances[g] for g in guards)
        split = self.splits.get(op)
        if split is None:
            units = float(self.tokens.get(key, {}).get("units", 1))
            self.g.add_node(path, step=StepLoad(path, op, units, guards, chance))
            return path, path
        one, two = split.parts
        units = float(self.tokens.get(key, {}).get("prompt", split.default_units))
        later = float(node.params.get(split.units_param, split.default_param_units))
        first, last = f"{path}:{one.split('.')[-1]}", f"{path}:{two.split('.')[-1]}"
        self.g.add_node(first, step=StepLoad(first, one, units, guards, chance))
        self.g.add_node(last, step=StepLoad(last, two, later, guards, chance))
        self.g.add_edge(first, last, bytes=split.handover_bytes_per_unit * units)
        return first, last


def flatten(
    spec: WorkflowSpec,
    splits: dict[str, Split],
    tokens: dict[str, Any] | None = None,
    shape: Shape | None = None,
) -> tuple[nx.DiGraph, dict[str, float]]:
    """The planning graph of ``spec`` and the chances of its guards. A node that never runs
    (chance 0) is left out; so is a wait node (``wait.*``: the run parks, holding no worker:
    the time it waits for a person or a timer is not the fleet's to plan); the steps after
    it keep their order."""
    b = _Builder(nx.DiGraph(), tokens or {}, splits, shape or Shape())
    b.scope(spec, "", set(), ())
    gone = [
        n
        for n, d in b.g.nodes(data=True)
        if d["step"].chance <= 0 or d["step"].op.startswith(WAIT_OP_PREFIX)
    ]
    for n in gone:
        b.g.add_edges_from(
            (p, s, {"bytes": EDGE_BYTES}) for p in b.g.predecessors(n) for s in b.g.successors(n)
        )
        b.g.remove_node(n)
    return b.g, {k: v for k, v in b.chances.items() if v > 0}


def load_workload(path: Path, splits: dict[str, Split] | None = None) -> list[WorkflowLoad]:
    """A workload file: ``workflows: [{file, rate, sla_p95_s, [sensitivity], [tokens],
    [shape], [name], [kind]}]``; ``file`` is a path, relative to the workload file, or a
    packaged example's name; ``name`` is the entry's own (to list a file twice, e.g. once
    per request ``kind``); ``shape: {chance: {node: chance}, loops: {node: mean
    iterations}, maps: {node: items}}`` (node paths as in ``tokens``, loop iterations and
    map items left out). Every mistake is a :class:`ConfigError` naming the file and the
    field."""
    doc = load_data_file(path, ConfigError)  # bounded, UTF-8, alias bombs refused
    if doc is None:
        raise ConfigError(f"{path}: no workflows")
    if not isinstance(doc, dict) or not isinstance(doc.get("workflows"), list):
        raise ConfigError(f"{path}: expected 'workflows:', a list of {{file, rate, sla_p95_s}}")
    flows = [_entry(path, i, w, splits or {}) for i, w in enumerate(doc["workflows"])]
    if not flows:
        raise ConfigError(f"{path}: no workflows")
    names = [f.name for f in flows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{path}: workflow(s) listed twice: {', '.join(twice)}")
    return flows


KNOWN = {"file", "rate", "sla_p95_s", "sensitivity", "tokens", "shape", "name", "kind"}


def _entry(path: Path, i: int, w: Any, splits: dict[str, Split]) -> WorkflowLoad:
    where = f"{path}: workflows[{i}]"
    if not isinstance(w, dict):
        raise ConfigError(f"{where}: expected a table {{file, rate, sla_p95_s}}, got {w!r}")
    missing = [k for k in ("file", "rate", "sla_p95_s") if k not in w]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(w) - KNOWN)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; "
            f"the fields are {', '.join(sorted(KNOWN))}"
        )
    rate, sla = _positive(w, "rate", where), _positive(w, "sla_p95_s", where)
    spec = _workflow(path, str(w["file"]), where)
    if w.get("tokens") is not None and not isinstance(w["tokens"], dict):
        raise ConfigError(f"{where}: tokens: expected {{node: {{param: tokens}}}}")
    shape = Shape.parse(w.get("shape"), where)
    graph, chances = flatten(spec, splits, w.get("tokens"), shape)
    sensitivity = w.get("sensitivity") or spec.sensitivity
    for key in ("name", "kind"):
        if key in w and (not isinstance(w[key], str) or not w[key]):
            raise ConfigError(f"{where}: {key}: {w[key]!r}: expected a name (text)")
    name = w.get("name") or spec.name
    return WorkflowLoad(name, rate, sla, graph, sensitivity, chances, w.get("kind"))


def _positive(w: dict[str, Any], key: str, where: str) -> float:
    value = w[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}: {value!r} is not a number") from None
    if isinstance(value, bool) or not number > 0 or math.isinf(number):
        raise ConfigError(f"{where}: {key}: {value!r} must be a positive number")
    return number


def _workflow(path: Path, name: str, where: str) -> WorkflowSpec:
    """``name`` beside the workload file, else a packaged example; errors name both places."""
    file = Path(name)
    if not file.is_absolute():
        beside = path.parent / file
        file = beside if beside.exists() or not (EXAMPLES / file).exists() else EXAMPLES / file
    if not file.is_file():
        raise ConfigError(
            f"{where}: file: '{name}' not found (looked in {path.parent} and the packaged examples)"
        )
    try:
        return load_workflow(file)
    except WorkflowValidationError as exc:
        raise ConfigError(f"{where}: file: {exc}") from None
