"""Compiled workflows: dependency order, heights, eligible classes, a stable digest."""

from __future__ import annotations

from fleet import Workflow
from fleet.config import FleetConfig
from fleet.engine.compiler import compile_workflow, may_end
from fleet.sdk.registry import registry


def _wf(name: str = "w") -> Workflow:
    wf = Workflow(name, inputs=["t"])
    b = wf.step("b", "text.upper", text=wf.input("t"))
    a = wf.step("a", "text.normalize", text=b["text"], classes=["io"])
    wf.output("out", a["text"])
    return wf


def test_scope_order_deps_heights_and_classes(cfg: FleetConfig) -> None:
    compiled = compile_workflow(_wf().spec(), cfg, registry)
    root = compiled.root
    assert [n.name for n in root.order] == ["b", "a"]
    assert root.deps == {"b": frozenset(), "a": frozenset({"b"})}
    assert root.height == {"b": 2, "a": 1}
    assert root.classes["a"] == ["io"] and root.classes["b"][0] == "cpu"


def test_digest_names_the_workflow_content(cfg: FleetConfig) -> None:
    one = compile_workflow(_wf().spec(), cfg, registry)
    same = compile_workflow(_wf().spec(), cfg, registry)
    other = compile_workflow(_wf("other").spec(), cfg, registry)
    assert one.digest == same.digest != other.digest
    assert len(one.digest) == 32 and '"name":"w"' in one.spec_json


def test_the_steps_a_run_may_end_with(cfg: FleetConfig) -> None:
    """Top-level nodes no other node reads; never a map item or a step of a loop's body."""
    compiled = compile_workflow(_wf().spec(), cfg, registry)
    assert may_end(compiled, "a") and not may_end(compiled, "b")
    assert not may_end(compiled, "a[3]")  # a map's item: its node ends with its last item
    assert not may_end(compiled, "sub/a") and not may_end(compiled, "loop#2/a")
