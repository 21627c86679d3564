from __future__ import annotations

import pytest

from fleet.errors import FleetError, UnknownOpError
from fleet.ops import Registry, op
from workers.ops import general, testing


def test_registry_records_signature_and_profile() -> None:
    reg = Registry()

    @op("t.demo", kind="model", classes=("gpu", "cpu"), outputs=("a",), registry_=reg)
    def demo(x: int, y: int = 2) -> dict[str, int]:
        """Add things."""
        return {"a": x + y}

    spec = reg.get("t.demo")
    assert spec.params == ("x", "y") and spec.required == ("x",)
    assert spec.prefers == "gpu" and spec.description == "Add things."
    assert spec.eligible(["cpu", "io", "gpu"]) == ["gpu", "cpu"]
    with pytest.raises(UnknownOpError):
        reg.get("t.none")


def test_bad_declarations_fail_at_import() -> None:
    reg = Registry()
    with pytest.raises(FleetError, match="kind must be one of"):
        op("x", kind="magic", registry_=reg)  # type: ignore[arg-type]
    with pytest.raises(FleetError, match="preferred class 'io'"):
        op("x", classes=("gpu",), prefers="io", registry_=reg)


def test_general_ops() -> None:
    assert general.template("${a}-${b}", a=1, b="x") == {"text": "1-x"}
    with pytest.raises(ValueError, match="needs a value for 'b'"):
        general.template("${a}-${b}", a=1)
    assert general.normalize("  A \n b ", lower=True) == {"text": "a b"}
    assert general.stats("one two\nthree") == {"chars": 13, "words": 3, "lines": 2}
    assert general.keywords("refund refund the order order order late", top=2) == {
        "keywords": ["order", "refund"]
    }
    assert general.contains("Please REFUND me", ["refund", "late"]) == {
        "matched": ["refund"],
        "found": True,
    }
    assert general.extract('{"a": {"b": [1, {"c": 5}]}}', "a.b.1.c") == {"value": 5, "found": True}
    assert general.extract({"a": 1}, "a.z", default=0) == {"value": 0, "found": False}
    with pytest.raises(ValueError, match="not valid JSON"):
        general.parse("{nope")
    assert general.add(2, 3) == {"result": 5}


def test_test_ops() -> None:
    assert testing.echo([1]) == {"value": [1]}
    assert testing.sleep(0.01, "v")["value"] == "v"
    with pytest.raises(ValueError, match="seconds"):
        testing.sleep(-1)
    with pytest.raises(testing.InjectedFailure, match="boom"):
        testing.fail("boom")
