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


def test_flower_shows_a_workflow_signature_end_to_end(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """A workflow started as a Celery signature: Flower sees its task succeed (the fleet
    announces the end the task itself does not reach) and the run's steps by name."""
    from fleet.client.client import Fleet
    from fleet.worker.app import app as default_app
    from fleet.worker.app import create_app
    from fleet.workflow.builder import Workflow

    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "flower_port": free_port()}
    )
    app = create_app(cfg)
    try:
        with LocalFleet(cfg, ["cpu", "io"], flower=True, workdir=tmp_path) as fleet:
            auth = tuple(fleet.flower_auth.split(":", 1))
            base = f"http://127.0.0.1:{cfg.flower_port}"
            wf = Workflow("flower-sig", inputs=["t"])
            wf.output("out", wf.step("loud", "text.upper", text=wf.input("t"))["text"])
            result = Fleet(app, cfg).signature(wf, {"t": "seen"}).apply_async()
            assert result.get(timeout=30) == {"out": "SEEN"}
            deadline = time.monotonic() + 30
            info: dict[str, object] = {}
            while time.monotonic() < deadline and info.get("state") != "SUCCESS":
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    url = f"{base}/api/task/info/{result.id}"
                    info = httpx.get(url, auth=auth, timeout=10).json()  # type: ignore[arg-type]
                time.sleep(0.5)
            assert info.get("state") == "SUCCESS" and info.get("name") == "fleet.workflow"
            tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).json()  # type: ignore[arg-type]
            names = {t.get("name") for t in tasks.values()}
            assert "flower-sig:loud [text.upper]" in names, names
    finally:
        default_app.set_current()  # the tests' own app stays the current one
