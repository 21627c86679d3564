"""The public ``Workflow``: the builder, plus what a workflow is to Celery -- a signature that
goes into any canvas (``wf.s()``, ``wf.si()``) and a canvas of its own (``wf.to_canvas()``),
both on the default fleet (:func:`fleet.client.client.default_fleet`)."""

from __future__ import annotations

from typing import Any

from celery.canvas import Signature

from fleet.client import client
from fleet.workflow.builder import WorkflowBuilder


class Workflow(WorkflowBuilder):
    """A workflow built in Python (see :class:`fleet.workflow.builder.WorkflowBuilder`)."""

    def s(self, **inputs: Any) -> Signature:
        """This workflow as a Celery signature on the default fleet: in a ``chain`` it takes
        the previous task's result as inputs, and its result is the outputs dict (see
        :meth:`fleet.Fleet.signature`, which takes a fleet of your own and run options)."""
        return client.signature(self, inputs)

    def si(self, **inputs: Any) -> Signature:
        """An immutable signature: it ignores the chain's value; every input is given here."""
        return client.signature(self, inputs, immutable=True)

    def to_canvas(self, **inputs: Any) -> Signature:
        """One run of this workflow compiled to a Celery canvas, on the default fleet (see
        :meth:`fleet.Fleet.to_canvas`)."""
        return client.to_canvas(self, inputs)
