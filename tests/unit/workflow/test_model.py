from __future__ import annotations

import pytest

from fleet import Workflow
from fleet.workflow.model import Condition, WorkflowSpec


@pytest.mark.parametrize(
    ("text", "actual", "expected"),
    [
        ("a.b == 'billing'", "billing", True),
        ("a.b == 'billing'", "tech", False),
        ("a.b != 3", 4, True),
        ("a.b >= 3", 3, True),
        ("a.b < 3", None, False),  # an absent value never satisfies an ordering
        ("a.b in [x, y]", "y", True),
        ("a.b not in [x, y]", "y", False),
        ("a.b contains refund", ["refund", "late"], True),
        ("a.b", "", False),
        ("not a.b", "", True),
        ("a.b == true", True, True),
        ("a.b == yes", "yes", True),  # a bare word is a string (YAML would say True)
        ("a.b == 'no'", "no", True),
        ('a.b == "3"', 3, False),
    ],
)
def test_condition_parse_and_evaluate(text: str, actual: object, expected: bool) -> None:
    assert Condition.parse(text).evaluate(actual) is expected


def test_condition_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot parse condition"):
        Condition.parse("a.b =~ x")


def test_builder_splits_inputs_from_params_and_builds_conditions() -> None:
    wf = Workflow("w", inputs=["text"])
    clean = wf.step("clean", "text.normalize", text=wf.input("text"), lower=True)
    kw = wf.step("kw", "text.keywords", text=clean["text"], when=clean["text"] != "")
    alt = wf.step("alt", "text.upper", text=kw["keywords"] | clean["text"])
    wf.output("out", alt["text"])
    spec = wf.spec()
    node = spec.node("clean")
    assert node.inputs == {"text": "inputs.text"} and node.params == {"lower": True}
    assert spec.node("kw").when == Condition(ref="clean.text", op="!=", value="")
    assert spec.node("alt").inputs == {"text": ["kw.keywords", "clean.text"]}
    # the spec is plain JSON and round-trips
    again = WorkflowSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


def test_builder_loop_needs_bound() -> None:
    body = Workflow("b", inputs=["n"])
    step = body.step("add", "math.add", a=body.input("n"), b=1)
    wf = Workflow("w", inputs=["n"])
    with pytest.raises(ValueError, match="max_iterations"):
        wf.loop("l", body, until=step["result"] > 3, n=wf.input("n"))
    node = wf.loop("l2", body, max_iterations=4, until=step["result"] > 3, n=wf.input("n"))
    assert node.spec.loop is not None and node.spec.loop.max_iterations == 4
