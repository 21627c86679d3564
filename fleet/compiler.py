"""Compile a planned segment into Celery canvas.

One level of steps is a task (one step) or a group (parallel steps); a group followed by more
work is a chord (fan-in). A segment holds at most one group: Celery turns ``chain(group, ...)``
into ``chord(group, body=chain(...))``, so a second group would nest a chord inside a chord's
body, and nested chords bloat every message (celery#5000, #5286). The levels after the first
group's successor are left to the next ``fleet.advance``, which ends every segment anyway to
decide conditions and loops at run time.

No signature carries a queue: the router places every task when it is sent.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature

from fleet.plan import Envelope, Frame, Plan, StepCall

STEP = "fleet.step"
ADVANCE = "fleet.advance"


def _step_sig(app: Celery, call: StepCall, run: dict[str, Any]) -> Signature:
    options: dict[str, Any] = {}
    if call["timeout"]:
        options["soft_time_limit"] = call["timeout"]
        options["time_limit"] = call["timeout"] + 5
    if run.get("priority") is not None:
        options["priority"] = run["priority"]
    return app.signature(STEP, kwargs={"call": call, "run": run}, **options)


def segment_levels(levels: list[list[StepCall]]) -> list[list[StepCall]]:
    """The levels one canvas runs: everything up to (not including) a second group."""
    groups = [i for i, level in enumerate(levels) if len(level) > 1]
    return levels[: groups[1]] if len(groups) > 1 else levels


def build(app: Celery, plan: Plan, run: dict[str, Any], spec: dict[str, Any]) -> Signature:
    """The canvas for ``plan``'s next levels followed by the advance task."""
    parts: list[Signature] = []
    for level in segment_levels(plan.levels):
        sigs = [_step_sig(app, call, run) for call in level]
        parts.append(group(sigs) if len(sigs) > 1 else sigs[0])
    frames: list[Frame] = plan.frames
    parts.append(app.signature(ADVANCE, kwargs={"run": run, "spec": spec, "frames": frames}))
    return chain(*parts)


def send(canvas: Signature, envelope: Envelope) -> Any:
    """Send the canvas with the run's envelope as the first task's argument."""
    return canvas.apply_async(args=(envelope,))
