"""A parked run outlives its whole fleet of workers and a broker restart (Redis with its
append-only file, as `fleet up` runs it): everything it holds is in the run store."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import ORPHAN_SUSPECTS_KEY, ORPHANS_SENT_KEY
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app
from fleet.paths import EXAMPLES
from tests.integration.test_waits import parked

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stop_workers(fleet: LocalFleet) -> None:
    workers = [c for c in fleet.children if c.cls is not None]
    for child in workers:
        child.proc.send_signal(signal.SIGTERM)
    for child in workers:
        child.proc.wait(30)
        fleet.children.remove(child)


def _restart_redis(fleet: LocalFleet) -> None:
    (old,) = [c for c in fleet.children if c.name == "redis"]
    old.proc.send_signal(signal.SIGTERM)  # a clean shutdown writes the append-only file
    old.proc.wait(10)
    fleet.children.remove(old)
    fleet._ensure_redis(fleet.cfg.broker_url)


def test_parked_runs_survive_every_worker_and_the_broker_restarting(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    # short timings: the orphan check looks at the parked runs twice, a grace period apart
    # (what it takes to send a step again), before the workers stop
    fast = {"orphan_after_s": 1.0, "worker_ttl": 2.0, "heartbeat_interval": 0.5}
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", **fast})
    timer = Workflow("timer", inputs=["t"])
    pause = timer.step("pause", "wait.for", seconds=9)
    timer.output("at", pause["at"])
    with LocalFleet(cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None) as fl:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        refund = client.submit(EXAMPLES / "refund_approval.yaml", {"order": "Z-9", "amount": 400})
        started = time.time()
        later = client.submit(timer, {"t": 1})
        parked(refund), parked(later)
        time.sleep(8)  # heartbeats and orphan checks come and go: nothing is sent again
        broker = client.store.redis
        for run, node in ((refund, "approval"), (later, "pause")):  # (were suspects before)
            assert not broker.hget(ORPHAN_SUSPECTS_KEY, f"{run.id}|{node}")
        _stop_workers(fl)
        _restart_redis(fl)
        time.sleep(1.5)  # the timer's time passes while no worker is up to release it
        assert later.status() == "running" and refund.status() == "running"
        for cls in fl.classes:
            fl._start_worker(cls)
        fl.wait_for_workers(60)
        assert later.get(timeout=30)["at"] >= started + 9  # released once workers came back
        client.signal(refund.id, "approval", {"approved": True, "by": "ana"})
        out = refund.get(timeout=30)
        assert out == {"outcome": "refunded 400 for order Z-9, approved by ana"}
        done = [e.node for e in refund.trace() if e.status == "succeeded"]
        assert done.count("approval") == 1 and done.count("granted") == 1
        assert not broker.hget(ORPHANS_SENT_KEY, f"{refund.id}|approval")
        assert not broker.hget(ORPHANS_SENT_KEY, f"{later.id}|pause")
