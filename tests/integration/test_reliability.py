"""A worker process killed in the middle of a step loses nothing: the step is redelivered
(acks_late + task_reject_on_worker_lost) and the workflow completes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fleet.runtime.client import Fleet
from fleet.workflow.builder import Workflow

pytestmark = pytest.mark.integration


def _active_pid(client: Fleet, node: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = client.app.control.inspect(timeout=1.0).active() or {}
        for tasks in active.values():
            for task in tasks:
                if task.get("kwargs", {}).get("call", {}).get("path") == node:
                    return int(task["worker_pid"])
        time.sleep(0.1)
    raise AssertionError(f"step {node} never became active")


def test_killed_worker_process_does_not_lose_the_step(client: Fleet) -> None:
    wf = Workflow("survivor", inputs=["v"])
    slow = wf.step("slow", "test.sleep", seconds=2.0, value=wf.input("v"), classes=["cpu"])
    after = wf.step("after", "text.upper", text=slow["value"])
    wf.output("out", after["text"])
    run = client.submit(wf, {"v": "still here"})
    pid = _active_pid(client, "slow")
    os.kill(pid, signal.SIGKILL)  # the prefork child running the step dies
    assert run.get(timeout=60) == {"out": "STILL HERE"}
    steps = [e for e in run.trace() if e.node == "slow" and e.status == "succeeded"]
    assert len(steps) == 1  # it ran to completion once, after redelivery
