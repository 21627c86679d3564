"""Wait nodes as the validator and the engine read them: params, times, timeouts."""

from __future__ import annotations

import pytest

from fleet import Workflow
from fleet.config import load_config
from fleet.errors import WorkflowValidationError
from fleet.sdk.registry import registry
from fleet.workflow.validate import validate
from fleet.workflow.waits import moment, seconds, signal_names, timeout_handled, wait_nodes


def _check(wf: Workflow) -> None:
    cfg = load_config(env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    validate(wf.spec(), cfg, registry)


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"name": "no spaces allowed"}, "is not a signal name"),
        ({"name": ""}, "is not a signal name"),
        ({"name": "ok", "timeout_s": 0}, "timeout_s must be over 0"),
        ({"name": "ok", "timeout_s": float("inf")}, "timeout_s must be over 0"),
        ({"name": "ok", "timeout_s": "soon"}, "timeout_s must be a number of seconds"),
        ({"name": "ok", "timeout_s": 400 * 86400}, "at most"),
    ],
)
def test_bad_signal_params_are_refused_naming_the_field(params: dict, said: str) -> None:
    wf = Workflow("w")
    wf.output("d", wf.step("ask", "wait.signal", **params)["data"])
    with pytest.raises(WorkflowValidationError, match=said) as caught:
        _check(wf)
    assert caught.value.problems[0].node == "ask"


def test_a_signal_name_from_an_input_and_bad_times_are_refused() -> None:
    wf = Workflow("w", inputs=["n"])
    wf.output("d", wf.step("ask", "wait.signal", name=wf.input("n"))["data"])
    with pytest.raises(WorkflowValidationError, match="a signal's name is a param"):
        _check(wf)
    later = Workflow("later")
    later.output("a", later.step("t", "wait.until", at="next tuesday")["at"])
    with pytest.raises(WorkflowValidationError, match="not an ISO 8601 time"):
        _check(later)
    naive = Workflow("naive")
    naive.output("a", naive.step("t", "wait.until", at="2026-12-24T09:00:00")["at"])
    with pytest.raises(WorkflowValidationError, match="has no time zone"):
        _check(naive)


def test_times_read_as_unix_seconds() -> None:
    assert moment("2026-12-24T09:00:00+01:00") == moment("2026-12-24T08:00:00Z") == 1798099200.0
    assert moment(1798099200) == 1798099200.0
    assert seconds(2, "seconds") == 2.0
    with pytest.raises(ValueError, match="positive Unix time"):
        moment(-5)
    with pytest.raises(ValueError, match="must be a number"):
        seconds(True, "seconds")


def test_a_timeout_is_handled_where_something_reads_timed_out() -> None:
    wf = Workflow("w")
    ask = wf.step("ask", "wait.signal", name="go", timeout_s=5)
    wf.output("d", ask["data"])
    assert not timeout_handled(wf.spec(), "ask")
    wf.step("late", "text.upper", text="late", when=ask["timed_out"] == True)  # noqa: E712
    assert timeout_handled(wf.spec(), "ask")
    inner = Workflow("inner")
    inner.output("d", inner.step("approve", "wait.signal", name="approve")["data"])
    outer = Workflow("outer")
    outer.output("d", outer.agent("sub", inner)["d"])
    outer.step("pause", "wait.for", seconds=3)
    assert wait_nodes(outer.spec()) == [("sub/approve", "wait.signal"), ("pause", "wait.for")]
    assert signal_names(outer.spec()) == {"approve"}
