"""A soak: 2,000 workflows through a local fleet. Worker memory stays flat, and every key a
run writes expires: the keys without a TTL after 2,000 runs are those after 200, no larger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNS = 2000


def _lasting(r: redis.Redis, queues: set[str]) -> dict[str, int]:
    """Keys without a TTL (the class queues aside) and the size of each: fields, members or
    items (a string is one value: a counter's digits may grow, its key does not)."""
    sizes = {"hash": r.hlen, "set": r.scard, "zset": r.zcard, "list": r.llen, "string": _one}
    found = {}
    for key in r.scan_iter(count=1000):
        if r.ttl(key) == -1 and key.split("\x06\x16")[0] not in queues:
            found[key] = int(sizes[r.type(key)](key))
    return found


def _one(key: str) -> int:
    return 1


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
        r = redis.Redis.from_url(cfg.broker_url, decode_responses=True)
        queues = {q for c in cfg.classes.values() for q in c.queues} | {"unacked", "unacked_index"}
        rss: list[float] = []
        start = time.monotonic()
        for batch in range(RUNS // 200):
            runs = [client.submit(wf, {"t": f" run {batch} {i} "}) for i in range(200)]
            assert all(run.get(timeout=120)["out"].startswith("RUN") for run in runs)
            rss += [e.rss_mb or 0.0 for e in runs[-1].trace()]
            if batch == 0:
                first = _lasting(r, queues)
        elapsed = time.monotonic() - start
        # peak RSS of the worker processes: no growth after the first batches warmed them up
        assert max(rss[-4:]) - max(rss[2:6]) < 20, rss
        # what lasts is the fleet's, not the runs': after 2,000 runs the keys without a TTL
        # are the ones there were after 200, none larger (workers, classes, ops, workflows)
        last = _lasting(r, queues)
        assert set(last) == set(first), sorted(set(last) ^ set(first))[:10]
        grown = {k: (first[k], n) for k, n in last.items() if n > first[k]}
        assert grown == {}, grown
        assert len(last) < 50, sorted(last)[:60]
        print(
            f"{RUNS} workflows in {elapsed:.1f} s ({RUNS / elapsed:.0f}/s); worker peak RSS {rss}"
        )
