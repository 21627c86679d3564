"""A run's priority changes the order of work: on a class whose one slot is busy, a run
submitted last with priority 9 starts before the priority-0 runs queued ahead of it. The
same test runs on RabbitMQ (test_rabbitmq.py): the two brokers read message priorities in
opposite orders, and the fleet's priority means the same on both."""

from __future__ import annotations

import time

from fleet.client.client import Fleet
from fleet.routing.state import StateReader
from tests.integration.test_workflows import _napper


def _started(run: object) -> float:
    (entry,) = [e for e in run.trace() if e.node == "nap"]  # type: ignore[attr-defined]
    return float(entry.started_at)


def test_a_higher_priority_run_overtakes_the_queue(client: Fleet) -> None:
    reader = StateReader(client.cfg)
    blocker = client.submit(
        _napper("prio-blocker", 3.0, "npu-lite"), {"v": "b"}
    )  # npu-lite: one slot
    deadline = time.monotonic() + 20  # until npu-lite's heartbeat says it is busy
    while time.monotonic() < deadline and reader.read().busy("npu-lite") < 1:
        time.sleep(0.05)
    short = _napper("prio-queued", 0.2, "npu-lite")
    low = [client.submit(short, {"v": f"low{i}"}, priority=0) for i in range(3)]
    plain = client.submit(short, {"v": "plain"})  # no priority: the lowest, 0
    high = client.submit(short, {"v": "high"}, priority=9)
    for run in [blocker, *low, plain, high]:
        run.get(timeout=60)
    assert _started(high) > _started(blocker) + 1.0  # it was queued behind the blocker
    assert _started(high) < min(_started(r) for r in [*low, plain]), "priority 9 went first"
    # equal priorities keep their order: first submitted, first served
    assert [_started(r) for r in low] == sorted(_started(r) for r in low)
    assert _started(low[-1]) < _started(plain)
