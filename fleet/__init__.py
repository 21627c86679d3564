"""Agent workflows on a heterogeneous fleet of Celery workers.

Build a workflow (:class:`Workflow` or a YAML file), submit it with :class:`Fleet`, and each
step runs on the hardware-class queue (``gpu``, ``npu-lite``, ``cpu``, ``io``) that the routing
policy picks when the step is sent.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.errors import (
    FleetError,
    StepFailed,
    WorkflowFailed,
    WorkflowTimeout,
    WorkflowValidationError,
)

if TYPE_CHECKING:
    from fleet.client.client import Fleet, RunHandle, signature, submit, to_canvas
    from fleet.client.workflow import Workflow
    from fleet.messaging.app import app as app
    from fleet.sdk.registry import op, preloader
    from fleet.workflow.builder import Ref, Step
    from fleet.workflow.loader import load_workflow

# Each public name is loaded on first use, so that `import fleet` (and `fleet --help`) stays
# cheap: the client pulls in the Celery app and its configuration, the builder pydantic.
# `app` is how `celery -A fleet worker` finds the fleet's Celery app.
_LAZY = {
    "Fleet": "fleet.client.client",
    "RunHandle": "fleet.client.client",
    "submit": "fleet.client.client",
    "signature": "fleet.client.client",
    "to_canvas": "fleet.client.client",
    "op": "fleet.sdk.registry",
    "preloader": "fleet.sdk.registry",
    "Ref": "fleet.workflow.builder",
    "Step": "fleet.workflow.builder",
    "Workflow": "fleet.client.workflow",
    "load_workflow": "fleet.workflow.loader",
    "app": "fleet.messaging.app",
}

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
    "signature",
    "submit",
    "to_canvas",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")
