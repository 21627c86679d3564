"""Compiled canvas shapes: chain for sequence, group for fan-out, chord for fan-in."""

from __future__ import annotations

from typing import Any

from celery.canvas import Signature, _chain, _chord, group

from fleet.builder import Workflow
from fleet.compiler import build
from fleet.config import FleetConfig
from fleet.ops import registry
from fleet.plan import advance, new_envelope


def _canvas(wf: Workflow, inputs: dict[str, Any], cfg: FleetConfig) -> Signature:
    from fleet.app import app

    spec = wf.spec()
    plan = advance(spec, [], new_envelope(inputs), cfg, registry)
    return build(app, plan, {"id": "r1", "workflow": spec.name}, spec.model_dump(mode="json"))


def _names(sig: Signature) -> Any:
    if isinstance(sig, _chain):
        return ("chain", [_names(t) for t in sig.tasks])
    if isinstance(sig, _chord):
        return ("chord", [_names(t) for t in sig.tasks], _names(sig.body))
    if isinstance(sig, group):
        return ("group", [_names(t) for t in sig.tasks])
    return sig.task


def _no_queue(sig: Signature) -> None:
    """No signature in the canvas may carry a fixed queue: the router decides at send."""
    assert "queue" not in sig.options and "routing_key" not in sig.options
    for child in getattr(sig, "tasks", ()) or ():
        _no_queue(child)
    if isinstance(sig, _chord):
        _no_queue(sig.body)


def test_sequence_compiles_to_chain(cfg: FleetConfig) -> None:
    wf = Workflow("seq", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    wf.step("b", "text.upper", text=a["text"])
    canvas = _canvas(wf, {"t": "x"}, cfg)
    assert _names(canvas) == ("chain", ["fleet.step", "fleet.step", "fleet.advance"])
    steps = canvas.tasks[:2]  # type: ignore[attr-defined]
    assert [s.kwargs["call"]["path"] for s in steps] == ["a", "b"]
    assert steps[0].kwargs["call"]["classes"][0] == "cpu"
    _no_queue(canvas)


def test_fan_out_then_fan_in_is_a_chord(cfg: FleetConfig) -> None:
    wf = Workflow("par", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    c = wf.step("c", "text.stats", text=a["text"])
    wf.step("d", "text.template", template="${x}${y}", x=b["text"], y=c["words"])
    canvas = _canvas(wf, {"t": "x"}, cfg)
    assert _names(canvas) == (
        "chain",
        [
            "fleet.step",
            ("chord", ["fleet.step", "fleet.step"], ("chain", ["fleet.step", "fleet.advance"])),
        ],
    )
    _no_queue(canvas)


def test_a_second_group_waits_for_the_next_segment(cfg: FleetConfig) -> None:
    wf = Workflow("two", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"))
    b = wf.step("b", "text.stats", text=wf.input("t"))
    wf.step("c", "text.upper", text=a["text"])
    wf.step("d", "text.stats", text=a["text"], when=b["words"] > 0)
    wf.step("e", "text.upper", text=a["text"])
    canvas = _canvas(wf, {"t": "x"}, cfg)
    # never a chord nested in a chord's body: the group (c, e) is planned by fleet.advance
    assert _names(canvas) == ("chord", ["fleet.step", "fleet.step"], "fleet.advance")


def test_fan_out_at_the_end_joins_in_advance(cfg: FleetConfig) -> None:
    wf = Workflow("tail", inputs=["t"])
    wf.step("a", "text.upper", text=wf.input("t"))
    wf.step("b", "test.sleep", seconds=0, value=wf.input("t"), timeout=5)
    canvas = _canvas(wf, {"t": "x"}, cfg)
    assert _names(canvas) == ("chord", ["fleet.step", "fleet.step"], "fleet.advance")
    sleep = canvas.tasks[1]  # type: ignore[attr-defined]
    assert sleep.kwargs["call"]["classes"][0] == "io"
    assert sleep.options["soft_time_limit"] == 5
