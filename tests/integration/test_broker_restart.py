"""Restart the broker (Redis with appendonly, as `fleet up` runs it) in the middle of 50 runs:
none is lost, none hangs, and the workers keep serving. A message kombu took off its queue but
had not yet recorded as unacked when Redis went down is lost by the broker; the orphan check
(tests/integration/test_orphans.py) finds its step nowhere and sends it again."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.errors import FleetError
from fleet.messaging.app import create_app
from tests.support.restarts import assert_every_step_ran

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _restart_redis(fleet: LocalFleet) -> float:
    (old,) = [c for c in fleet.children if c.name == "redis"]
    old.proc.send_signal(signal.SIGTERM)  # a clean shutdown writes the append-only file
    old.proc.wait(10)
    fleet.children.remove(old)
    start = time.monotonic()
    fleet._ensure_redis(fleet.cfg.broker_url)
    return time.monotonic() - start


def test_a_broker_restart_loses_no_run(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("through-restart", inputs=["t"])
    a = wf.step("a", "test.sleep", seconds=0.3, value=wf.input("t"), classes=["io"])
    b = wf.step("b", "text.upper", text=a["value"], classes=["cpu"])
    c = wf.step("c", "test.sleep", seconds=0.2, value=b["text"], classes=["io"])
    wf.output("out", c["value"])
    with LocalFleet(
        cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None
    ) as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        runs = [client.submit(wf, {"t": f"run {i}"}) for i in range(50)]
        time.sleep(0.5)  # some runs finished, some mid-step, most queued
        _restart_redis(fleet)
        outcomes = []
        for i, run in enumerate(runs):
            try:
                outcomes.append(run.get(timeout=120) == {"out": f"RUN {i}"})
            except Exception as exc:  # counted below: lost or hung
                outcomes.append(False)
                print(f"run {i}: {exc}")
        assert outcomes.count(False) == 0, f"{outcomes.count(False)} of 50 lost or hung"
        running = sum(cfg.classes[c].concurrency for c in ("cpu", "io"))
        assert_every_step_ran(runs, {"a", "b", "c"}, running)
        again = client.submit(wf, {"t": "after"})
        assert again.get(timeout=30) == {"out": "AFTER"}
        assert all(c.proc.poll() is None for c in fleet.children), "a process died"


def test_a_run_submitted_while_the_broker_is_down_goes_in_once_it_is_back(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """The Python client retries a submission for a few seconds (a broker restart takes a
    moment): a run submitted while Redis is down is sent once it is back, and finishes. With
    no broker at all, submit gives up with an error naming the run and the broker, password
    hidden."""
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("while-down", inputs=["t"])
    wf.output("out", wf.step("up", "text.upper", text=wf.input("t"), classes=["cpu"])["text"])
    with LocalFleet(
        cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None
    ) as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        (redis_child,) = [c for c in fleet.children if c.name == "redis"]
        redis_child.proc.send_signal(signal.SIGTERM)
        redis_child.proc.wait(10)
        fleet.children.remove(redis_child)
        back = threading.Timer(0.8, fleet._ensure_redis, args=(cfg.broker_url,))
        back.start()
        start = time.monotonic()
        try:
            run = client.submit(wf, {"t": "while down"})  # the broker is down here
        finally:
            back.join()
        assert time.monotonic() - start >= 0.8  # it waited for the broker, and then:
        assert run.get(timeout=60) == {"out": "WHILE DOWN"}
    dead = fleet_cfg.model_copy(
        update={"broker_url": f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"}
    )
    start = time.monotonic()
    with pytest.raises(FleetError) as info:
        Fleet(app=create_app(dead), cfg=dead).submit(wf, {"t": "never"})
    said = str(info.value)
    assert said.startswith("could not submit run ") and " attempt(s) in " in said, said
    # one attempt's own wait (about 13 s), not five of them (79 s before this bound)
    assert time.monotonic() - start < 40, said
    assert "redis://:****@127.0.0.1" in said and "s3cret-pw" not in said
