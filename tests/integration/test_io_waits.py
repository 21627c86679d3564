"""The io class's pool (threads) with work beside its waits that does not yield: a step that
computes in pure Python for seconds (as a regex, a large JSON body or a tight loop would)
does not stall the waiting steps in the same worker process -- on a gevent pool it would hold
the hub until it ended. Real Redis, the session's real io worker (a thread pool)."""

from __future__ import annotations

import time

import pytest

from fleet import Workflow
from fleet.client.client import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_step_that_does_not_yield_stalls_no_wait_beside_it(client: Fleet) -> None:
    busy = Workflow("busy", inputs=["v"])
    spin = busy.step("spin", "test.spin", seconds=3.0, value=busy.input("v"), classes=["io"])
    busy.output("v", spin["value"])
    wait = Workflow("wait", inputs=["v"])
    slept = wait.step("wait", "test.sleep", seconds=0.3, value=wait.input("v"), classes=["io"])
    wait.output("v", slept["value"])

    spinning = client.submit(busy, {"v": "spun"})
    time.sleep(1.0)  # it has started computing (checked below from the traces)
    waits = [client.submit(wait, {"v": i}) for i in range(5)]
    assert [w.get(timeout=30) for w in waits] == [{"v": i} for i in range(5)]
    assert spinning.get(timeout=30) == {"v": "spun"}
    (spun,) = [e for e in spinning.trace() if e.node == "spin"]
    waited = [e for w in waits for e in w.trace() if e.node == "wait"]
    assert {e.worker for e in waited} == {spun.worker}  # the same io worker process
    assert len(waited) == 5
    assert min(e.started_at for e in waited) > spun.started_at  # they ran beside it...
    assert max(e.ended_at for e in waited) < spun.ended_at  # ...and were done before it was
