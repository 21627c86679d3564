"""A paused worker is not a dead one (issue 41, finding 8), on a local fleet of its own.

The step's holder is paused (SIGSTOP of the very process its start lease names) past its
lease, and a copy of the step's message is sent to another worker meanwhile -- what a
redelivery or a sweep does to a stalled worker. The copy finds the lease lapsed, looks the
holder's process up, finds it there, and does not run the op beside it; when the holder is
let go (SIGCONT) it finishes, once. Deterministic: the pause starts once the lease is taken
and the copy is sent only after the lease has lapsed; no step of it races a timer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import RUN_LEASES_KEY, RUN_STARTS_KEY, STEP_TASK, WORKER_INFO_KEY
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LEASE_S = 1.0
TEST_CONFIG = Path(__file__).parent.parent / "fleet-test.toml"


def _wait(what: str, found: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_a_copy_does_not_run_beside_a_paused_holder(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"  # the test configuration, with a 1-s start lease
    config.write_text(f"start_lease_s = {LEASE_S}\n" + TEST_CONFIG.read_text())
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "start_lease_s": LEASE_S}
    )
    wf = Workflow("paused", inputs=["v"])
    nap = wf.step("nap", "test.sleep", seconds=4.0, value=wf.input("v"), classes=["io"])
    wf.output("out", nap["value"])
    with LocalFleet(
        cfg,
        ["cpu", "io"],
        flower=False,
        workdir=tmp_path,
        env={"FLEET_CONFIG": str(config)},
        say=lambda _: None,
    ) as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        redis = client.store.redis
        run = client.submit(wf, {"v": "once"})
        active = _wait(
            "the step is active",
            lambda: [
                t
                for ts in (client.app.control.inspect(timeout=1.0).active() or {}).values()
                for t in ts
                if t["kwargs"]["run"]["id"] == run.id
            ],
        )
        lease = _wait("the lease", lambda: redis.hget(RUN_LEASES_KEY.format(id=run.id), "nap@0"))
        holder = lease.rpartition("|")[0]
        pid = int(holder.split("/")[2].partition(".")[0])  # the process that runs the op
        # its worker announces it among its processes: from another host it is judged alive
        beat = json.loads(redis.hget(WORKER_INFO_KEY, holder.split("/")[0]))
        assert pid in beat["pids"]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(LEASE_S + 0.5)  # unrenewed past its lease: lapsed
            copy = active[0]
            client.app.send_task(STEP_TASK, kwargs=copy["kwargs"], task_id=copy["id"], queue="cpu")
            log = fleet.workdir / "logs" / "worker-cpu.log"
            ended = re.compile(rf"\[{copy['id']}\] (ignored|succeeded|raised)")
            _wait("the copy's end", lambda: ended.search(log.read_text(errors="replace")))
        finally:
            os.kill(pid, signal.SIGCONT)
        text = log.read_text(errors="replace")
        assert f"its holder {holder} stalled: alive, not renewing" in text
        assert ended.search(text).group(1) == "ignored"  # type: ignore[union-attr]
        assert run.get(timeout=60) == {"out": "once"}
        assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]
        assert not redis.hget(RUN_STARTS_KEY.format(id=run.id), "nap@0")  # no death counted
        time.sleep(2 * LEASE_S)  # the copy, sent again, finds the step recorded
        assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]
