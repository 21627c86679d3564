"""Agent workflows on a heterogeneous fleet of Celery workers.

Build a workflow (:class:`Workflow` or a YAML file), submit it with :class:`Fleet`, and each
step runs on the hardware-class queue (``gpu``, ``npu-lite``, ``cpu``, ``io``) that the routing
policy picks when the step is sent.
"""

from __future__ import annotations

from typing import Any

from fleet.errors import (
    FleetError,
    StepFailed,
    WorkflowFailed,
    WorkflowTimeout,
    WorkflowValidationError,
)
from fleet.registry import op, preloader
from fleet.workflow.builder import Ref, Step, Workflow
from fleet.workflow.loader import load_workflow

__all__ = [
    "Fleet",
    "FleetError",
    "Ref",
    "RunHandle",
    "Step",
    "StepFailed",
    "Workflow",
    "WorkflowFailed",
    "WorkflowTimeout",
    "WorkflowValidationError",
    "load_workflow",
    "op",
    "preloader",
    "submit",
]


def __getattr__(name: str) -> Any:
    # The client pulls in the Celery app (and its configuration): load it only when asked.
    # `app` makes `celery -A fleet worker` find the fleet's Celery app.
    if name in ("Fleet", "RunHandle", "submit"):
        from fleet.runtime import client

        return getattr(client, name)
    if name == "app":
        from fleet.runtime.app import app

        return app
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")
