"""The rule by which a chained value becomes a workflow signature's inputs."""

from __future__ import annotations

import pytest

from fleet.errors import WorkflowValidationError
from fleet.workflow.chaining import chained_inputs, check_given
from fleet.workflow.model import WorkflowSpec

SPEC = WorkflowSpec(name="two", inputs=["question", "mode"], defaults={"mode": "short"})


def test_keywords_are_inputs_and_win_over_a_chained_dict() -> None:
    values = chained_inputs(SPEC, [{"question": "q", "mode": "long"}], {"mode": "brief"})
    assert values == {"question": "q", "mode": "brief"}


def test_any_other_value_goes_to_the_first_open_input() -> None:
    assert chained_inputs(SPEC, ["why?"], {}) == {"question": "why?"}
    assert chained_inputs(SPEC, [["a", "b"]], {"question": "q"}) == {
        "question": "q",
        "mode": ["a", "b"],
    }


def test_what_cannot_fit_is_named() -> None:
    with pytest.raises(WorkflowValidationError, match=r"(?s)'two'.*key\(s\) colour"):
        chained_inputs(SPEC, [{"question": "q", "colour": "red"}], {})
    with pytest.raises(WorkflowValidationError, match="no input to go to"):
        chained_inputs(SPEC, ["x"], {"question": "q", "mode": "m"})
    with pytest.raises(WorkflowValidationError, match="2 positional values"):
        chained_inputs(SPEC, ["x", "y"], {})
    with pytest.raises(WorkflowValidationError, match="missing workflow input 'question'"):
        chained_inputs(SPEC, [], {})


def test_a_signature_checks_what_it_was_given() -> None:
    check_given(SPEC, {"question": "q"}, complete=False)
    check_given(SPEC, {}, complete=False)  # the chain may give the rest
    with pytest.raises(WorkflowValidationError, match="unknown workflow input 'qustion'"):
        check_given(SPEC, {"qustion": "q"}, complete=False)
    with pytest.raises(WorkflowValidationError, match="missing workflow input 'question'"):
        check_given(SPEC, {}, complete=True)
