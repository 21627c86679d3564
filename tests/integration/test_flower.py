"""`fleet up` starts Flower next to the workers; its API and metrics see the fleet."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from fleet.config import FleetConfig
from fleet.runtime.local import LocalFleet, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flower_sees_the_class_workers(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "flower_port": free_port()}
    )
    with LocalFleet(cfg, ["cpu", "io"], flower=True, workdir=tmp_path, say=lambda s: None):
        base = f"http://127.0.0.1:{cfg.flower_port}"
        deadline = time.monotonic() + 60
        workers: dict[str, object] = {}
        while time.monotonic() < deadline and len(workers) < 2:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # Flower still starting
                workers = httpx.get(f"{base}/api/workers?refresh=1", timeout=10).json()
            time.sleep(0.5)
        assert {name.split("@")[0] for name in workers} == {"cpu", "io"}
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert "flower_" in metrics
