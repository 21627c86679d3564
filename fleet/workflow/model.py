"""The workflow model: a directed graph of typed nodes whose edges carry named outputs.

A reference ``"node.output"`` names an output of an earlier node; ``"inputs.name"`` names a
workflow input. An input given as a list of references takes the first one that was not
skipped -- the join after a conditional branch. The same model comes from the Python builder
(:mod:`fleet.workflow.builder`) and from YAML/JSON files (:mod:`fleet.workflow.loader`), and
travels as JSON.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

NODE_KINDS: tuple[str, ...] = ("model", "tool", "memory", "compute", "agent")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
REF_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)$")

CondOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "truthy", "falsy"]
_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
    "contains": lambda a, b: b in a,
}
_COND_RE = re.compile(r"^\s*(\S+)\s+(==|!=|<=|>=|<|>|not in|in|contains)\s+(.+?)\s*$")

Source = str | list[str]  # one reference, or alternatives (first not skipped wins)


def parse_ref(ref: str) -> tuple[str, str]:
    m = REF_RE.match(ref)
    if not m:
        raise ValueError(f"'{ref}' is not a reference of the form node.output")
    return m.group(1), m.group(2)


def alternatives(source: Source) -> list[str]:
    return [source] if isinstance(source, str) else list(source)


class Condition(BaseModel):
    """A predicate on one earlier output: ``ref op value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    op: CondOp = "truthy"
    value: Any = None

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse ``"classify.label == 'billing'"``, ``"check.ok"`` or ``"not check.ok"``."""
        text = text.strip()
        if text.startswith("not ") and " " not in text[4:].strip():
            return cls(ref=text[4:].strip(), op="falsy")
        if " " not in text:
            return cls(ref=text, op="truthy")
        m = _COND_RE.match(text)
        if not m:
            raise ValueError(f"cannot parse condition '{text}' (expected: node.output OP value)")
        ref, op, raw = m.groups()
        return cls(ref=ref, op=op, value=_literal(raw, text))

    def evaluate(self, actual: Any) -> bool:
        if self.op == "truthy":
            return bool(actual)
        if self.op == "falsy":
            return not actual
        try:
            return bool(_BINARY[self.op](actual, self.value))
        except TypeError:
            return False  # e.g. None < 3: an absent value never satisfies an ordering

    def __str__(self) -> str:
        if self.op in ("truthy", "falsy"):
            return self.ref if self.op == "truthy" else f"not {self.ref}"
        return f"{self.ref} {self.op} {self.value!r}"


def _literal(raw: str, text: str) -> Any:
    """A condition's value: JSON (true, 3, "x", [1]), 'quoted', a YAML flow list, or a bare word.

    Not plain YAML: YAML 1.1 would read the bare words yes / no / on / off as booleans.
    """
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw[0] in "[{":
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"condition '{text}': bad value {raw!r}: {exc}") from exc
    return raw


def _coerce_condition(v: Any) -> Any:
    return Condition.parse(v) if isinstance(v, str) else v


class LoopSpec(BaseModel):
    """Run a node's sub-workflow again until ``until`` holds, at most ``max_iterations``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_iterations: int = Field(ge=1, le=1000)
    until: Condition | None = None

    _coerce = field_validator("until", mode="before")(_coerce_condition)


class SplitSpec(BaseModel):
    """Run a splittable op (one that declares its split, e.g. LLM generation) as its two
    parts, each on a class of its own: ``prefill`` takes the first, ``decode`` the second."""

    model_config = ConfigDict(extra="forbid")

    prefill: str
    decode: str


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    op: str | None = None
    kind: str | None = None
    inputs: dict[str, Source] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    when: Condition | None = None
    prefer: str | None = None
    classes: list[str] | None = None
    retries: int | None = Field(default=None, ge=0, le=20)
    timeout: float | None = Field(default=None, gt=0)
    workflow: WorkflowSpec | None = None
    loop: LoopSpec | None = None
    # Name of a list input: run the op once per item, in parallel; outputs become lists.
    map: str | None = None
    # Data classification of this node's work (see WorkflowSpec.sensitivity).
    sensitivity: str | None = None
    # The op as its two parts on two classes (fleet.workflow.split expands it).
    split: SplitSpec | None = None
    # A `celery:` step's task returns a dict: these of its keys are outputs too (besides
    # `result`, the whole value).
    outputs: list[str] | None = None
    line: int | None = None

    _coerce = field_validator("when", mode="before")(_coerce_condition)

    @property
    def is_subflow(self) -> bool:
        return self.workflow is not None

    def refs(self) -> Iterator[tuple[str, str]]:
        """Every (field, reference) this node reads, conditions included."""
        for name, source in self.inputs.items():
            for ref in alternatives(source):
                yield f"inputs.{name}", ref
        if self.when is not None:
            yield "when", self.when.ref


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    inputs: list[str] = Field(default_factory=list)
    defaults: dict[str, Any] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(default_factory=list)
    outputs: dict[str, Source] = Field(default_factory=dict)
    source: str | None = None
    # Data classification (e.g. "confidential"): every node runs only on classes trusted
    # for it (ClassSpec.trusted_for); inherited by sub-workflows.
    sensitivity: str | None = None
    # where `inputs:` is written in the source file, for errors about a run's inputs
    inputs_line: int | None = Field(default=None, exclude=True)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]


NodeSpec.model_rebuild()
