"""A soak: 2,000 workflows through a local fleet. Worker memory stays flat, and every key the
fleet writes expires (the infrastructure keys that do not are few and bounded)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.worker.app import create_app
from fleet.workflow.builder import Workflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNS = 2000
# Keys that live as long as the fleet, bounded by its size (workers, classes, queues, ops).
# Kept on purpose: live-worker registries, online profiles, kombu's bindings, and the
# cumulative per-workflow counters of `fleet metrics` (a few dozen fields per workflow name).
PERMANENT = (
    "fleet:workers:",
    "fleet:worker-info",
    "fleet:profile:online",
    "_kombu.binding",
    "fleet:metrics:workflows",
)


def test_two_thousand_workflows_leave_flat_memory_and_expiring_keys(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("soak", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"), classes=["cpu"])
    b = wf.step("b", "text.upper", text=a["text"], classes=["io"])
    wf.output("out", b["text"])
    local = LocalFleet(cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None)
    with local:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        rss: list[float] = []
        start = time.monotonic()
        for batch in range(RUNS // 200):
            runs = [client.submit(wf, {"t": f" run {batch} {i} "}) for i in range(200)]
            assert all(r.get(timeout=120)["out"].startswith("RUN") for r in runs)
            rss += [e.rss_mb or 0.0 for e in runs[-1].trace()]
        elapsed = time.monotonic() - start
        # peak RSS of the worker processes: no growth after the first batches warmed them up
        assert max(rss[-4:]) - max(rss[2:6]) < 20, rss
        r = redis.Redis.from_url(cfg.broker_url, decode_responses=True)
        queues = {c.queue_name for c in cfg.classes.values()} | {"unacked", "unacked_index"}
        forever = [
            k
            for k in r.scan_iter(count=1000)
            if r.ttl(k) == -1
            and k.split("\x06\x16")[0] not in queues
            and not k.startswith(PERMANENT)
        ]
        assert forever == [], forever[:10]
        assert r.hlen("fleet:metrics:workflows") <= 30  # one workflow: bounded, not per run
        print(
            f"{RUNS} workflows in {elapsed:.1f} s ({RUNS / elapsed:.0f}/s); worker peak RSS {rss}"
        )
