"""Compile a planned segment into Celery canvas.

One level of steps is a task (one step) or a group (parallel steps); a group followed by a step
is a chord (fan-in). Two groups in a row get a ``fleet.join`` between them so that chords never
nest. Every segment ends with ``fleet.advance``, which plans and sends the next segment (the
place where conditions and loops are decided at run time).

No signature carries a queue: the router places every task when it is sent.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature

from fleet.plan import Envelope, Frame, Plan, StepCall

STEP = "fleet.step"
ADVANCE = "fleet.advance"
JOIN = "fleet.join"


def _step_sig(app: Celery, call: StepCall, run: dict[str, Any]) -> Signature:
    options: dict[str, Any] = {}
    if call["timeout"]:
        options["soft_time_limit"] = call["timeout"]
        options["time_limit"] = call["timeout"] + 5
    if run.get("priority") is not None:
        options["priority"] = run["priority"]
    return app.signature(STEP, kwargs={"call": call, "run": run}, **options)


def build(
    app: Celery, plan: Plan, run: dict[str, Any], spec: dict[str, Any]
) -> Signature:
    """The canvas for ``plan``'s levels followed by the advance task."""
    parts: list[Signature] = []
    previous_was_group = False
    for level in plan.levels:
        sigs = [_step_sig(app, call, run) for call in level]
        if len(sigs) == 1:
            parts.append(sigs[0])
            previous_was_group = False
            continue
        if previous_was_group:
            parts.append(app.signature(JOIN))
        parts.append(group(sigs))
        previous_was_group = True
    frames: list[Frame] = plan.frames
    parts.append(app.signature(ADVANCE, kwargs={"run": run, "spec": spec, "frames": frames}))
    return chain(*parts) if len(parts) > 1 else parts[0]


def send(canvas: Signature, envelope: Envelope) -> Any:
    """Send the canvas with the run's envelope as the first task's argument."""
    return canvas.apply_async(args=(envelope,))
