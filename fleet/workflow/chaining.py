"""How a value from a Celery chain becomes a workflow's inputs.

A workflow signature (``wf.s(...)``) in a chain receives the previous task's return value.
The rule, checked in this order:

1. keywords given in the signature itself are inputs by name, and win;
2. a ``dict`` fills inputs by key -- every key must be an input of the workflow;
3. any other value (a string, a list, the list a chord gives its callback) fills the first
   declared input that the signature's keywords left open.

Errors name the workflow and what did not fit; they are raised before a run is created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleet.errors import Problem, WorkflowValidationError
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.validate import check_inputs


def check_given(spec: WorkflowSpec, given: dict[str, Any], complete: bool) -> None:
    """Inputs given to a signature: none unknown; all present when ``complete`` (an
    immutable ``si()``, which takes nothing from the chain)."""
    if complete:
        check_inputs(spec, given)
        return
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        known = ", ".join(spec.inputs) or "none"
        found = [Problem(f"unknown workflow input '{n}' (inputs: {known})") for n in unknown]
        raise WorkflowValidationError(found, workflow=spec.name)


def chained_inputs(
    spec: WorkflowSpec, args: Sequence[Any], given: dict[str, Any]
) -> dict[str, Any]:
    """The run's inputs: ``given`` (the signature's keywords) and what the chain passed."""
    if len(args) > 1:
        raise _error(spec, f"got {len(args)} positional values; a chain passes one")
    values = dict(given)
    if args:
        value = args[0]
        if isinstance(value, dict):
            unknown = sorted(str(k) for k in value if k not in spec.inputs)
            if unknown:
                known = ", ".join(spec.inputs) or "none"
                raise _error(
                    spec,
                    f"the chained dict has key(s) {', '.join(unknown)} that are not inputs "
                    f"(inputs: {known}); map them in a task before the workflow",
                )
            values = {**value, **given}
        else:
            free = [name for name in spec.inputs if name not in given]
            if not free:
                raise _error(
                    spec,
                    f"the chained {type(value).__name__} has no input to go to: the "
                    "signature's keywords give every input (use .si() to ignore it)",
                )
            values[free[0]] = value
    check_inputs(spec, values)
    return values


def _error(spec: WorkflowSpec, message: str) -> WorkflowValidationError:
    return WorkflowValidationError([Problem(message)], workflow=spec.name)
