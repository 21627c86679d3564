"""`fleet up --autoscale` on a real local fleet: a load step grows the cpu and io classes
within their bounds, the fleet drains it, and the classes shrink back; each change is
recorded with its reason and exported as a metric."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import AutoscaleSpec, FleetConfig
from fleet.constants import AUTOSCALE_KEY
from fleet.deploy.autoscale import Autoscaler
from fleet.deploy.local import LocalFleet, free_port
from fleet.measurement.metrics import FleetCollector
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_load_step_grows_the_classes_and_they_shrink_after(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    classes = dict(fleet_cfg.classes)
    classes["cpu"] = classes["cpu"].model_copy(update={"concurrency": 1, "max_workers": 3})
    classes["io"] = classes["io"].model_copy(update={"concurrency": 2, "max_workers": 2})
    cfg = fleet_cfg.model_copy(
        update={
            "broker_url": f"redis://127.0.0.1:{free_port()}/0",
            "classes": classes,
            "autoscale": AutoscaleSpec(
                interval_s=0.5, up_wait_s=0.5, down_idle_s=3.0, cooldown_s=1.0
            ),
        }
    )
    said: list[str] = []
    wf = Workflow("load-step", inputs=["t"])
    a = wf.step("a", "test.sleep", seconds=0.4, value=wf.input("t"), classes=["cpu"])
    b = wf.step("b", "test.sleep", seconds=0.4, value=a["value"], classes=["io"])
    wf.output("out", b["value"])
    try:
        with LocalFleet(cfg, ["cpu", "io"], flower=False, workdir=tmp_path) as fleet:
            scaler = Autoscaler(fleet, say=said.append)
            client = Fleet(create_app(cfg), cfg)
            runs = [client.submit(wf, {"t": str(i)}) for i in range(30)]
            most = {"cpu": 1, "io": 1}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(r.status() == "running" for r in runs):
                fleet.supervise()
                scaler.step()
                for cls in most:
                    most[cls] = max(most[cls], len(fleet.workers_of(cls)))
                time.sleep(0.2)
            assert [r.get(timeout=5) for r in runs] == [{"out": str(i)} for i in range(30)]
            assert most["cpu"] >= 2 and most["io"] >= 2, (most, said)
            assert most["cpu"] <= 3 and most["io"] <= 2  # never past max_workers
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                len(fleet.workers_of("cpu")) > 1 or len(fleet.workers_of("io")) > 1
            ):
                fleet.supervise()
                scaler.step()
                time.sleep(0.2)
            assert len(fleet.workers_of("cpu")) == 1 and len(fleet.workers_of("io")) == 1, said
            grew = [s for s in said if "-> 2 workers" in s and "expected wait" in s]
            shrank = [s for s in said if "-> 1 workers" in s and "nothing queued" in s]
            assert grew and shrank, said
            backend = redis.Redis.from_url(cfg.backend_url, decode_responses=True)
            cpu = json.loads(backend.hget(AUTOSCALE_KEY, "cpu") or "{}")
            assert cpu["workers"] == 1 and cpu["up"] >= 1 and cpu["down"] == cpu["up"]
            metrics = {m.name: m for m in FleetCollector(cfg).collect()}
            ups = [
                s.value
                for s in metrics["fleet_autoscale_changes"].samples
                if s.labels == {"class": "cpu", "direction": "up"}
            ]
            assert ups == [cpu["up"]]
    finally:
        from fleet.messaging.app import app

        app.set_current()
