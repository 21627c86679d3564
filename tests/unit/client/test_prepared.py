"""A client checks and compiles a workflow it builds once per change, not per submission."""

from __future__ import annotations

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.errors import WorkflowValidationError
from fleet.messaging.app import create_app


def test_a_builder_is_checked_once_per_change(cfg: FleetConfig) -> None:
    client = Fleet(create_app(cfg), cfg)
    wf = Workflow("w", inputs=["t"])
    up = wf.step("up", "text.upper", text=wf.input("t"))
    wf.output("t", up["text"])
    first, _ = client._prepare(wf, {"t": "a"}, None, None)
    again, values = client._prepare(wf, {"t": "b"}, None, None)
    assert again is first and values == {"t": "b"}  # the same compiled workflow
    wf.step("bad", "no.such.op", text=up["text"])  # a change: checked again, and refused
    with pytest.raises(WorkflowValidationError, match=r"unknown op 'no\.such\.op'"):
        client._prepare(wf, {"t": "c"}, None, None)
    other = Workflow("w", inputs=["t"])
    other.output("t", other.step("up", "text.upper", text=other.input("t"))["text"])
    assert client._prepare(other, {"t": "d"}, None, None)[0] is not first  # its own entry
