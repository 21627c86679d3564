"""The orphan check: a step whose message the broker lost (taken off its queue, not yet
recorded as unacked, when Redis restarted) is found nowhere and sent again, once; a step
that is queued, or held by a worker, however long, is left alone."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.constants import ACTIVE_RUNS_KEY, ORPHANS_SENT_KEY
from fleet.engine.readiness import StepCall
from tests.support.sends import sends_through

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _succeeded(run: Any, node: str) -> int:
    return sum(1 for e in run.trace() if e.node == node and e.status == "succeeded")


def test_a_step_whose_message_was_lost_is_sent_again(client: Fleet, broker: redis.Redis) -> None:
    wf = Workflow("orphan-lost", inputs=["t"])
    first = wf.step("first", "text.upper", text=wf.input("t"), classes=["cpu"])
    second = wf.step("second", "text.normalize", text=first["text"], classes=["io"])
    wf.output("out", second["text"])
    lost: list[StepCall] = []
    with sends_through(client.dispatcher, lambda call, run, **_: lost.append(call)):
        run = client.submit(wf, {"t": " lost  message "})  # claimed, never published
    assert [c["path"] for c in lost] == ["first"] and run.status() == "running"
    assert run.get(timeout=60) == {"out": "LOST MESSAGE"}
    assert _succeeded(run, "first") == 1 and _succeeded(run, "second") == 1
    assert broker.hexists(ORPHANS_SENT_KEY, f"{run.id}|first")
    assert broker.zscore(ACTIVE_RUNS_KEY, run.id) is None  # ended: no longer watched


def test_queued_and_held_steps_are_not_sent_again(client: Fleet, broker: redis.Redis) -> None:
    wf = Workflow("orphan-busy", inputs=["t"])
    nap = wf.step("nap", "test.sleep", seconds=9.0, value=wf.input("t"), classes=["npu-lite"])
    wf.output("out", nap["value"])
    # npu-lite runs one step at a time: the first is held for 9 s, the second queued as long
    runs = [client.submit(wf, {"t": str(i)}) for i in range(2)]
    assert [r.get(timeout=60) for r in runs] == [{"out": "0"}, {"out": "1"}]
    for r in runs:
        assert _succeeded(r, "nap") == 1
        assert not broker.hexists(ORPHANS_SENT_KEY, f"{r.id}|nap")
