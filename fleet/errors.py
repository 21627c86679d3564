"""Exceptions that cross module boundaries. Every message names what is wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


class FleetError(Exception):
    """Base class for every error this package raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow: where (file, line, node, field) and what."""

    message: str
    node: str | None = None
    field: str | None = None
    line: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        elif self.line:
            where.append(f"line {self.line}")
        if self.node:
            where.append(f"node '{self.node}'")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class WorkflowValidationError(FleetError):
    """A workflow failed validation; nothing was enqueued."""

    def __init__(self, problems: list[Problem] | str, workflow: str | None = None) -> None:
        self.workflow = workflow
        if isinstance(problems, str):  # remade from its message (a Celery task's result)
            self.problems: list[Problem] = []
            super().__init__(problems)
            return
        self.problems = problems
        head = f"workflow '{workflow}' is invalid" if workflow else "workflow is invalid"
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{head} ({len(problems)} problem(s)):\n{body}")


class ConfigError(FleetError):
    """The fleet configuration (file or environment) is invalid."""


class UnknownOpError(FleetError):
    """An op name is not in the registry."""


class RuntimeRefused(FleetError, RuntimeError):
    """A process bound to a GPU was asked to load a second native runtime (or another than
    its lane's): it would crash, so the step goes to a process that serves that runtime."""


class Unroutable(FleetError):
    """A step has no class it may be sent to: this configuration leaves its node no eligible
    class, or no live worker of one has its Celery task. Its run fails naming the node."""


class ReadinessError(FleetError):
    """The run cannot go on: a node's inputs are not what it needs (names the node)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"node '{path}': {message}")
        self.path = path


class StepFailed(FleetError):
    """An op raised while running one node of a workflow."""

    def __init__(self, node: str, op: str, error: str) -> None:
        self.node = node
        self.op = op
        self.error = error
        super().__init__(node, op, error)  # args remake it (pickled, or a task's result)

    def __str__(self) -> str:
        return f"node '{self.node}' (op {self.op}) failed: {self.error}"


class WorkflowFailed(FleetError):
    """A submitted workflow run ended in failure."""

    def __init__(self, run_id: str, node: str | None, error: str) -> None:
        self.run_id = run_id
        self.node = node
        self.error = error
        super().__init__(run_id, node, error)  # args remake it (a Celery task's result)

    def __str__(self) -> str:
        where = f" at node '{self.node}'" if self.node else ""
        return f"run {self.run_id} failed{where}: {self.error}"


class WorkflowTimeout(FleetError):
    """A run did not finish within the time the caller was willing to wait."""
