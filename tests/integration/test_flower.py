"""`fleet up` starts Flower next to the workers; its API and metrics see the fleet."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flower_sees_the_class_workers(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "flower_port": free_port()}
    )
    said: list[str] = []
    with LocalFleet(cfg, ["cpu", "io"], flower=True, workdir=tmp_path, say=said.append) as fleet:
        base = f"http://127.0.0.1:{cfg.flower_port}"
        user, password = fleet.flower_auth.split(":", 1)
        assert any(password in line for line in said)  # generated, and printed once
        auth = (user, password)
        deadline = time.monotonic() + 60
        workers: dict[str, object] = {}
        while time.monotonic() < deadline and len(workers) < 2:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # Flower still starting
                workers = httpx.get(f"{base}/api/workers?refresh=1", auth=auth, timeout=10).json()
            time.sleep(0.5)
        assert {name.split("@")[0] for name in workers} == {"cpu", "io"}
        metrics = httpx.get(f"{base}/metrics", auth=auth, timeout=5).text
        assert "flower_" in metrics
        assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401  # no auth, no API
