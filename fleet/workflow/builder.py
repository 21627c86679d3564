"""Python builder API for workflows.

    wf = Workflow("triage", inputs=["text"])
    clean = wf.step("clean", "text.normalize", text=wf.input("text"))
    kw = wf.step("kw", "text.keywords", text=clean["text"], top=3)
    big = wf.step("shout", "text.upper", text=clean["text"], when=kw["keywords"].contains("refund"))
    wf.output("answer", big["text"] | clean["text"])   # first branch that ran

Keyword arguments that are references (``step["output"]``, ``wf.input(name)``) become inputs;
anything else becomes a constant param. Comparisons on a reference build conditions.
"""

from __future__ import annotations

from typing import Any

from fleet.constants import INPUTS
from fleet.workflow.model import Condition, CondOp, LoopSpec, NodeSpec, Source, WorkflowSpec


class Ref:
    """A named output of a node (or a workflow input): the end of an edge."""

    __slots__ = ("node", "output")

    def __init__(self, node: str, output: str) -> None:
        self.node = node
        self.output = output

    def __str__(self) -> str:
        return f"{self.node}.{self.output}"

    def __repr__(self) -> str:
        return f"Ref({self})"

    def __hash__(self) -> int:
        return hash((self.node, self.output))

    def _cond(self, op: CondOp, value: Any = None) -> Condition:
        return Condition(ref=str(self), op=op, value=value)

    def __eq__(self, value: object) -> Condition:  # type: ignore[override]
        return self._cond("==", value)

    def __ne__(self, value: object) -> Condition:  # type: ignore[override]
        return self._cond("!=", value)

    def __lt__(self, value: Any) -> Condition:
        return self._cond("<", value)

    def __le__(self, value: Any) -> Condition:
        return self._cond("<=", value)

    def __gt__(self, value: Any) -> Condition:
        return self._cond(">", value)

    def __ge__(self, value: Any) -> Condition:
        return self._cond(">=", value)

    def is_in(self, values: Any) -> Condition:
        return self._cond("in", values)

    def contains(self, value: Any) -> Condition:
        return self._cond("contains", value)

    def truthy(self) -> Condition:
        return self._cond("truthy")

    def falsy(self) -> Condition:
        return self._cond("falsy")

    def __or__(self, other: Ref | Alternatives) -> Alternatives:
        return Alternatives([self]) | other


class Alternatives:
    """Several sources for one input: the first whose node was not skipped wins."""

    def __init__(self, refs: list[Ref]) -> None:
        self.refs = refs

    def __or__(self, other: Ref | Alternatives) -> Alternatives:
        more = other.refs if isinstance(other, Alternatives) else [other]
        return Alternatives([*self.refs, *more])


def _source(value: Ref | Alternatives) -> Source:
    return str(value) if isinstance(value, Ref) else [str(r) for r in value.refs]


def _condition(when: Condition | Ref | str | None) -> Condition | None:
    if when is None or isinstance(when, Condition):
        return when
    if isinstance(when, Ref):
        return when.truthy()
    return Condition.parse(when)


class Step:
    """Handle to a node in a workflow under construction."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __getitem__(self, output: str) -> Ref:
        return Ref(self.spec.name, output)

    def out(self, output: str) -> Ref:
        return self[output]


class WorkflowBuilder:
    def __init__(
        self,
        name: str,
        inputs: list[str] | tuple[str, ...] = (),
        *,
        description: str = "",
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self._spec = WorkflowSpec(
            name=name, description=description, inputs=list(inputs), defaults=defaults or {}
        )
        self._revision = 0

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def revision(self) -> int:
        """How many changes the workflow has had: a client that checked and compiled this
        revision (submitting it many times) need not do it again."""
        return self._revision

    def input(self, name: str) -> Ref:
        if name not in self._spec.inputs:
            self._spec.inputs.append(name)
            self._revision += 1
        return Ref(INPUTS, name)

    def _add(self, node: NodeSpec) -> Step:
        self._spec.nodes.append(node)
        self._revision += 1
        return Step(node)

    @staticmethod
    def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Source], dict[str, Any]]:
        inputs: dict[str, Source] = {}
        params: dict[str, Any] = {}
        for key, value in kwargs.items():
            if isinstance(value, Ref | Alternatives):
                inputs[key] = _source(value)
            else:
                params[key] = value
        return inputs, params

    def step(
        self,
        name: str,
        op: str,
        /,
        *,
        when: Condition | Ref | str | None = None,
        prefer: str | None = None,
        classes: list[str] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        map: str | None = None,
        outputs: list[str] | None = None,
        args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Step:
        """Add an op node. References in ``kwargs`` are inputs; other values are params.

        The keywords above configure the node itself; an op argument with one of those names
        (http.request's ``timeout``, say) goes in ``args={...}``, split the same way.
        ``op`` may be ``"celery:<task name>"``: an existing Celery task, sent by name; its
        result is the output ``result``, and ``outputs`` names keys of a dict result that
        become outputs too.
        """
        inputs, params = self._split({**(args or {}), **kwargs})
        return self._add(
            NodeSpec(
                name=name,
                op=op,
                inputs=inputs,
                params=params,
                when=_condition(when),
                prefer=prefer,
                classes=classes,
                retries=retries,
                timeout=timeout,
                map=map,
                outputs=outputs,
            )
        )

    def agent(
        self,
        name: str,
        workflow: WorkflowBuilder | WorkflowSpec,
        /,
        *,
        when: Condition | Ref | str | None = None,
        max_iterations: int | None = None,
        until: Condition | Ref | str | None = None,
        **inputs: Any,
    ) -> Step:
        """Add a nested workflow; with ``max_iterations`` it repeats until ``until`` holds.

        Each repetition feeds the body's outputs back into its inputs of the same name.
        ``until`` refers to nodes inside the body. An input given as a reference is an edge;
        any other value (``n=0``) is a constant: the nested body's default for that input.
        """
        body = (
            workflow.spec()
            if isinstance(workflow, WorkflowBuilder)
            else workflow.model_copy(deep=True)
        )
        refs, constants = self._split(inputs)
        body.defaults.update(constants)
        loop = None
        if max_iterations is not None:
            loop = LoopSpec(max_iterations=max_iterations, until=_condition(until))
        elif until is not None:
            raise ValueError(f"node '{name}': 'until' needs max_iterations (loops are bounded)")
        return self._add(
            NodeSpec(
                name=name,
                kind="agent",
                workflow=body,
                loop=loop,
                inputs=refs,
                when=_condition(when),
            )
        )

    loop = agent

    def output(self, name: str, source: Ref | Alternatives) -> None:
        self._spec.outputs[name] = _source(source)
        self._revision += 1

    def spec(self) -> WorkflowSpec:
        """A copy of the model built so far (validate it with fleet.workflow.validate)."""
        return self._spec.model_copy(deep=True)
