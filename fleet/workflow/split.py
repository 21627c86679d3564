"""``split:`` on a node: a splittable op runs as its two parts on two classes.

An op declares how it splits (``@op(..., split=(first, second, handover))``: LLM generation
is its prefill, then its decode of the prefill's ``state``). A node of that op with
``split: {prefill: CLASS, decode: CLASS}`` becomes an agent node whose body is the two
steps, each pinned to its class, the handover passed by reference between them::

    answer:                      answer (agent node, same inputs)
      op: GENERATE         ->      prefill: FIRST op on CLASS   (its inputs and params)
      split: {...}                 decode:  SECOND op on CLASS  (state: prefill.state)

The node keeps its name and its inputs; its outputs are the second part's, plus the first
part's under ``prefill_<name>`` (``prefill_state_bytes``: the size of the handover).
Everything downstream reads it as before. Nodes that cannot be expanded (an op that does
not split, a ``map``) are left alone for the validator to name.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.constants import INPUTS
from fleet.sdk.registry import Registry
from fleet.workflow.model import NodeSpec, SplitSpec, WorkflowSpec

FIRST, SECOND = "prefill", "decode"


def expand_splits(
    spec: WorkflowSpec,
    registry: Registry,
    planned: Mapping[str, Mapping[str, str]] | None = None,
) -> WorkflowSpec:
    """``spec`` with every splittable ``split:`` node expanded (a copy; ``spec`` stays).
    ``planned`` (a plan's ``splits``, ``"workflow:node path" -> {prefill, decode}``) splits
    the nodes it names that do not say ``split:`` themselves."""
    mine = {
        k.split(":", 1)[1]: v for k, v in (planned or {}).items() if k.startswith(f"{spec.name}:")
    }
    if not _has_split(spec) and not mine:
        return spec
    out = spec.model_copy(deep=True)
    _expand(out, registry, mine, "")
    return out


def _has_split(spec: WorkflowSpec) -> bool:
    return any(
        (n.split is not None and n.op is not None) or (n.workflow and _has_split(n.workflow))
        for n in spec.nodes
    )


def _expand(
    spec: WorkflowSpec, registry: Registry, planned: Mapping[str, Mapping[str, str]], prefix: str
) -> None:
    for i, node in enumerate(spec.nodes):
        path = prefix + node.name
        if node.workflow is not None:
            _expand(node.workflow, registry, planned, f"{path}/")
            continue
        if node.split is None and path in planned and node.op in registry.names():
            node = spec.nodes[i] = node.model_copy(
                update={"split": SplitSpec.model_validate(dict(planned[path]))}
            )
        if node.split is not None and node.op in registry.names() and node.map is None:
            parts = registry.get(node.op).split
            if parts is not None:
                spec.nodes[i] = _two_steps(node, parts, registry)


def _two_steps(node: NodeSpec, parts: tuple[str, str, str], registry: Registry) -> NodeSpec:
    assert node.split is not None
    first_op, second_op, handover = parts
    first, second = registry.get(first_op), registry.get(second_op)

    def steps_args(params: tuple[str, ...]) -> tuple[dict[str, str], dict[str, object]]:
        inputs = {k: f"{INPUTS}.{k}" for k in node.inputs if k in params}
        return inputs, {k: v for k, v in node.params.items() if k in params}

    first_inputs, first_params = steps_args(first.params)
    second_inputs, second_params = steps_args(second.params)
    common = {"retries": node.retries, "timeout": node.timeout, "line": node.line}
    body = WorkflowSpec(
        name=f"{node.name}-split",
        inputs=list(node.inputs),
        nodes=[
            NodeSpec(
                name=FIRST,
                op=first_op,
                inputs=first_inputs,
                params=first_params,
                classes=[node.split.prefill],
                **common,
            ),
            NodeSpec(
                name=SECOND,
                op=second_op,
                inputs={**second_inputs, handover: f"{FIRST}.{handover}"},
                params=second_params,
                classes=[node.split.decode],
                **common,
            ),
        ],
        outputs={
            **{o: f"{SECOND}.{o}" for o in second.outputs},
            **{f"prefill_{o}": f"{FIRST}.{o}" for o in first.outputs if o != handover},
        },
    )
    return node.model_copy(
        update={
            "op": None,
            "kind": "agent",
            "params": {},
            "retries": None,
            "timeout": None,
            "prefer": None,
            "classes": None,
            "workflow": body,
        }
    )
