"""Agent workflows on a heterogeneous fleet of Celery workers.

Build a workflow (:class:`Workflow` or a YAML file), submit it with :class:`Fleet`, and each
step runs on the hardware-class queue (``gpu``, ``npu-lite``, ``cpu``, ``io``) that the routing
policy picks when the step is sent.
"""

from __future__ import annotations

from typing import Any

from fleet.builder import Ref, Step, Workflow
from fleet.errors import (
    FleetError,
    StepFailed,
    WorkflowFailed,
    WorkflowTimeout,
    WorkflowValidationError,
)
from fleet.loader import load_workflow
from fleet.ops import op

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
    "submit",
]


def __getattr__(name: str) -> Any:
    # The client pulls in the Celery app (and its configuration): load it only when asked.
    if name in ("Fleet", "RunHandle", "submit"):
        from fleet import client

        return getattr(client, name)
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")
