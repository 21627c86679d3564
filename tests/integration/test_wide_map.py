"""A 3,000-item map: each item's message carries its own item, items join a set instead of
reading the run's state, and only the last one decides -- linear, not quadratic (before:
37 s and 252 MB of Redis for 3,000 items)."""

from __future__ import annotations

import time

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ITEMS = 3000


def test_a_three_thousand_item_map_is_linear(client: Fleet, broker: redis.Redis) -> None:
    wf = Workflow("wide", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text", classes=["io"])
    joined = wf.step("joined", "text.join", parts=ups["text"], sep=",", classes=["cpu"])
    wf.output("out", joined["text"])
    before = int(broker.info("memory")["used_memory"])
    start = time.monotonic()
    run = client.submit(wf, {"texts": [f"t{i}" for i in range(ITEMS)]})
    out = run.get(timeout=180)
    elapsed = time.monotonic() - start
    assert out["out"].split(",") == [f"T{i}" for i in range(ITEMS)]
    grown_mb = (int(broker.info("memory")["used_memory"]) - before) / 2**20
    print(f"{ITEMS} items in {elapsed:.1f} s; Redis grew {grown_mb:.1f} MB")
    assert elapsed < 90 and grown_mb < 60
