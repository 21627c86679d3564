"""Compiled workflows: dependency order, heights, eligible classes, a stable digest."""

from __future__ import annotations

from fleet import Workflow
from fleet.config import FleetConfig
from fleet.engine.compiler import compile_workflow
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
