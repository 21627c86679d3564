"""Which Celery tasks the live workers of each class have: the check that a workflow's
``celery:`` steps can run somewhere, made when it is submitted instead of when the step
waits forever in a queue nobody who knows the task reads.

Fleet workers announce their registered tasks with their heartbeat (the worker-info hash),
so the check costs one Redis read -- no ``inspect registered`` broadcast -- and that read is
kept for ``CACHE_S`` per process: a burst of submissions pays it once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from fleet.constants import CELERY_OP_PREFIX, TASK_PREFIX, WORKER_INFO_KEY
from fleet.engine.compiler import CompiledWorkflow, Scope
from fleet.errors import Problem, WorkflowValidationError
from fleet.workflow.model import WorkflowSpec

CACHE_S = 2.0


def celery_steps(workflow: CompiledWorkflow) -> list[tuple[str, str, list[str]]]:
    """(node path, task name, eligible classes) of every ``celery:`` step, nested ones too."""
    return list(_walk(workflow.root, ""))


def _walk(scope: Scope, prefix: str) -> Iterator[tuple[str, str, list[str]]]:
    for name, op in scope.ops.items():
        if op.name.startswith(CELERY_OP_PREFIX):
            yield prefix + name, op.name[len(CELERY_OP_PREFIX) :], scope.classes[name]
    for name, child in scope.children.items():
        yield from _walk(child, f"{prefix}{name}/")


def _where(spec: WorkflowSpec, path: str) -> dict[str, Any]:
    """The file and line of the node at ``path`` (``loop/inner``), as every other problem
    carries them; nothing where the workflow was not read from a file."""
    file, node = spec.source, None
    for name in path.split("/"):
        if node is not None and node.workflow is not None:
            spec = node.workflow
            file = spec.source or file
        node = next((n for n in spec.nodes if n.name == name), None)
        if node is None:
            return {}
    return {"file": file, "line": node.line} if file and node is not None else {}


def _internal(task: str) -> str:
    """Whose internal task ``task`` is ("the fleet", "Celery"), or "" for anyone else's.
    Workers never announce these (workers.heartbeat), so they would read as missing."""
    if task.startswith(TASK_PREFIX):
        return "the fleet"
    return "Celery" if task.startswith("celery.") else ""


class RegisteredTasks:
    """The live workers' registered tasks per class, read from Redis at most every
    ``CACHE_S``: one per client (:class:`fleet.client.client.Fleet`) or worker process."""

    def __init__(self, client: redis.Redis, worker_ttl: float) -> None:
        self.client = client
        self.worker_ttl = worker_ttl
        self._lock = threading.Lock()
        self._read: tuple[float, dict[str, set[str]]] | None = None

    def by_class(self) -> dict[str, set[str]]:
        """Class -> the task names some live worker of it has registered."""
        now = time.monotonic()
        with self._lock:
            if self._read is not None and now - self._read[0] < CACHE_S:
                return self._read[1]
        found: dict[str, set[str]] = {}
        for raw in self.client.hvals(WORKER_INFO_KEY):
            info = json.loads(raw)
            if time.time() - float(info.get("last_seen", 0)) > self.worker_ttl:
                continue
            for cls in info.get("classes", ()):
                found.setdefault(cls, set()).update(info.get("tasks", ()))
        with self._lock:
            self._read = (now, found)
        return found

    def check(self, workflow: CompiledWorkflow) -> None:
        """Raise, naming each node, when no live worker of its classes has its Celery task."""
        steps = celery_steps(workflow)
        if not steps:
            return
        problems = [
            Problem(
                f"'{task}' is an internal task of {owner}, not one a `celery:` step may call: "
                "name a task of your own (a module in task_modules)",
                node=path,
                field="op",
                **_where(workflow.spec, path),
            )
            for path, task, _ in steps
            if (owner := _internal(task))
        ]
        if problems:
            raise WorkflowValidationError(problems, workflow=workflow.spec.name)
        have = self.by_class()
        problems = [
            Problem(
                f"no live worker of class(es) {', '.join(classes) or 'none'} has the Celery "
                f"task '{task}' registered (task_modules in the fleet config imports a module "
                "of tasks on every worker)",
                node=path,
                field="op",
                **_where(workflow.spec, path),
            )
            for path, task, classes in steps
            if not any(task in have.get(cls, ()) for cls in classes)
        ]
        if problems:
            raise WorkflowValidationError(problems, workflow=workflow.spec.name)
