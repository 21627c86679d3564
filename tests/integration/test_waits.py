"""Runs that wait, on the test fleet (real Redis, real workers): a run parks on a wait node
holding no message and no worker slot, and a signal, a timer or a timeout moves it on."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet, RunHandle
from fleet.config import FleetConfig
from fleet.constants import RUN_WAITS_KEY, WAITS_DUE_KEY, WORKER_INFO_KEY
from fleet.engine.waits import SignalError
from fleet.errors import WorkflowFailed
from fleet.paths import EXAMPLES

pytestmark = pytest.mark.integration
REFUND = EXAMPLES / "refund_approval.yaml"


def parked(run: RunHandle, timeout: float = 20.0) -> list[str]:
    """The nodes ``run`` waits on, once it waits on one."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        waiting = [e.node for e in run.trace() if e.status == "waiting"]
        if waiting:
            return waiting
        time.sleep(0.05)
    raise AssertionError(f"run {run.id} never waited: {run.status()}, {run.trace()}")


def held(broker: redis.Redis, cfg: FleetConfig, run_id: str) -> list[str]:
    """Where a message or a worker slot of run ``run_id`` is: a class queue (any priority),
    the unacknowledged hash, or a live worker's announced steps (its heartbeat)."""
    found = []
    for spec in cfg.classes.values():
        for queue in spec.queues:
            names = [queue, *broker.scan_iter(match=f"{queue}\x06\x16*")]
            found += [n for n in names for m in broker.lrange(n, 0, -1) if run_id in m]
    found += ["unacked" for m in broker.hvals("unacked") if run_id in m]
    for raw in broker.hvals(WORKER_INFO_KEY):
        info = json.loads(raw)
        if time.time() - info["last_seen"] < 5:
            found += [info.get("pid", "?") for r, _ in info.get("steps", ()) if r == run_id]
    return [str(f) for f in found]


def test_a_refund_over_the_limit_waits_for_approval_holding_nothing(
    client: Fleet, broker: redis.Redis, fleet_cfg: FleetConfig
) -> None:
    run = client.submit(REFUND, {"order": "A-17", "amount": 250})
    assert parked(run) == ["approval"]
    time.sleep(1.5)  # a heartbeat or two: what the workers hold now
    assert run.status() == "running"
    assert held(broker, fleet_cfg, run.id) == []  # no message, no worker slot
    (entry,) = [e for e in run.trace() if e.status == "waiting"]
    assert entry.signal == "approval" and entry.until is not None
    assert 86000 < entry.until - entry.started_at <= 86400
    sent = time.monotonic()
    done = client.signal(run.id, "approval", {"approved": True, "by": "ana"})
    assert done.outcome == "resumed" and done.path == "approval"
    out = run.get(timeout=30)
    assert out == {"outcome": "refunded 250 for order A-17, approved by ana"}
    print(f"signal to outputs: {(time.monotonic() - sent) * 1000:.0f} ms")
    assert not broker.exists(RUN_WAITS_KEY.format(id=run.id))  # nothing left parked
    assert broker.zscore(WAITS_DUE_KEY, f"{run.id}|approval") is None
    statuses = {e.node: e.status for e in run.trace()}
    assert statuses["approval"] == "succeeded" and statuses["expired"] == "skipped"
    small = client.submit(REFUND, {"order": "A-18", "amount": 40})
    assert small.get(timeout=30) == {"outcome": "refunded 40 for order A-18 (under the limit)"}


def test_a_refusal_takes_its_branch_through_the_handle(client: Fleet) -> None:
    run = client.submit(REFUND, {"order": "B-2", "amount": 900})
    parked(run)
    assert run.signal("approval", {"approved": False, "by": "li"}).outcome == "resumed"
    assert run.get(timeout=30) == {"outcome": "refund for order B-2 refused by li"}


def _after_a_step(seconds: float) -> Workflow:
    """A run that waits for 'go' only after a step of ``seconds``."""
    wf = Workflow("early-signal", inputs=["t"])
    slow = wf.step("slow", "test.sleep", seconds=seconds, value=wf.input("t"), classes=["io"])
    go = wf.step("go", "wait.signal", name="go", when=slow["value"] == "x")
    wf.output("data", go["data"])
    return wf


def test_a_signal_sent_before_its_node_waits_is_kept_for_it(client: Fleet) -> None:
    run = client.submit(_after_a_step(1.0), {"t": "x"})
    done = client.signal(run.id, "go", {"n": 1})
    assert done.outcome == "kept"
    assert run.get(timeout=30) == {"data": {"n": 1}}  # never parked for long


def test_each_bad_signal_is_refused_and_changes_nothing(client: Fleet) -> None:
    run = client.submit(REFUND, {"order": "C-3", "amount": 300})
    parked(run)
    before = run.trace()
    with pytest.raises(SignalError, match="no run nope"):
        client.signal("nope", "approval", {})
    with pytest.raises(SignalError, match=r"takes no signal 'aproval' \(it takes: approval\)"):
        client.signal(run.id, "aproval", {})
    with pytest.raises(SignalError, match="not JSON"):
        client.signal(run.id, "approval", {"when": object()})
    with pytest.raises(SignalError, match="not JSON"):
        client.signal(run.id, "approval", float("nan"))
    with pytest.raises(SignalError, match="bytes of data"):
        client.signal(run.id, "approval", "x" * 70_000)
    assert [e.status for e in run.trace()] == [e.status for e in before]
    assert run.status() == "running"
    client.signal(run.id, "approval", {"approved": True, "by": "ana"})
    run.get(timeout=30)
    with pytest.raises(SignalError, match="has ended \\(succeeded\\)"):
        client.signal(run.id, "approval", {"approved": False, "by": "late"})
    assert run.get(timeout=1)["outcome"].endswith("approved by ana")


def test_the_cli_signals_and_shows_the_wait(client: Fleet) -> None:
    run = client.submit(REFUND, {"order": "D-4", "amount": 120})
    parked(run)
    fleet = [sys.executable, "-m", "fleet.cli.main"]
    shown = subprocess.run([*fleet, "trace", run.id], capture_output=True, text=True, timeout=60)
    assert "approval waits for signal 'approval' since" in " ".join(shown.stdout.split())
    bad = subprocess.run(
        [*fleet, "signal", run.id, "approval", "--data", "{not json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--data is not JSON" in bad.stderr
    assert "Traceback" not in bad.stderr
    wrong = subprocess.run(
        [*fleet, "signal", run.id, "refund"], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 2 and "takes no signal 'refund'" in wrong.stderr
    data = json.dumps({"approved": True, "by": "cli"})
    ok = subprocess.run(
        [*fleet, "signal", run.id, "approval", "--data", data],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "node 'approval' took signal 'approval'" in ok.stdout
    assert run.get(timeout=30)["outcome"].endswith("approved by cli")


def _with_timeout(handled: bool) -> Workflow:
    wf = Workflow("answer-or-not", inputs=["t"])
    ask = wf.step("ask", "wait.signal", name="answer", timeout_s=1)
    if handled:
        late = wf.step("late", "text.upper", text=wf.input("t"), when=ask["timed_out"] == True)  # noqa: E712
        wf.output("out", late["text"])
    else:
        wf.output("out", ask["data"])
    return wf


def test_a_timeout_takes_the_timed_out_branch_or_fails_the_run_naming_the_node(
    client: Fleet,
) -> None:
    run = client.submit(_with_timeout(True), {"t": "nobody answered"})
    assert run.get(timeout=30) == {"out": "NOBODY ANSWERED"}
    failing = client.submit(_with_timeout(False), {"t": "x"})
    with pytest.raises(WorkflowFailed) as caught:
        failing.get(timeout=30)
    assert caught.value.node == "ask"
    assert "no signal 'answer' within 1 s" in str(caught.value)


def test_timers_wait_for_seconds_and_until_a_time(client: Fleet) -> None:
    wf = Workflow("timers", inputs=["t"])
    pause = wf.step("pause", "wait.for", seconds=1.5)
    again = wf.step("again", "wait.until", at=wf.input("t"))
    wf.output("after", pause["at"])
    wf.output("at", again["at"])
    start = time.time()
    run = client.submit(wf, {"t": "2020-01-01T00:00:00Z"})  # a time gone: on at once
    out = run.get(timeout=30)
    assert out["after"] - start >= 1.5 and out["at"] >= start
    with pytest.raises(WorkflowFailed, match="not an ISO 8601 time"):
        client.submit(wf, {"t": "tomorrow"}).get(timeout=30)


def test_a_canvas_refuses_a_workflow_that_waits(client: Fleet) -> None:
    with pytest.raises(Exception, match=r"node .approval. waits \(wait.signal\)"):
        client.to_canvas(REFUND, {"order": "E-5", "amount": 500})
