"""`fleet up` starts Flower next to the workers; its API and metrics see the fleet."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import cast

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
        assert (tmp_path / "flower-auth").read_text().strip() == fleet.flower_auth
        assert (tmp_path / "flower-auth").stat().st_mode & 0o077 == 0  # the owner's only
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
    from fleet import Workflow
    from fleet.client.client import Fleet
    from fleet.messaging.app import app as default_app
    from fleet.messaging.app import create_app

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
            client = Fleet(app, cfg)
            for i in range(20):  # the step names hold whatever order their events arrive in
                assert client.run(wf, {"t": str(i)}, timeout=30)["out"] == str(i)
            time.sleep(2)  # Flower takes the last events in
            tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).json()  # type: ignore[arg-type]
            names = [t.get("name") for t in tasks.values()]
            assert names.count("flower-sig:loud [text.upper]") >= 20, sorted(map(str, names))
            assert "fleet.step" not in names, names
    finally:
        default_app.set_current()  # the tests' own app stays the current one


def _get(base: str, path: str, auth: tuple[str, str]) -> object:
    with contextlib.suppress(httpx.HTTPError, ValueError):  # Flower still starting
        return httpx.get(f"{base}{path}", auth=auth, timeout=10).json()
    return None


def test_flower_finds_a_worker_started_after_it_and_keeps_its_password(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """Flower inspects the workers once, at its start: a later worker used to stay out of
    /api/workers and the queue view until ?refresh=1. And a restarted Flower (or the next
    `fleet up` in the same folder) asks for the password printed the first time."""
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "flower_port": free_port()}
    )
    base = f"http://127.0.0.1:{cfg.flower_port}"
    with LocalFleet(cfg, ["io"], flower=True, workdir=tmp_path, say=lambda _: None) as fleet:
        auth = cast(tuple[str, str], tuple(fleet.flower_auth.split(":", 1)))
        deadline = time.monotonic() + 60
        workers: object = None
        while time.monotonic() < deadline and not workers:
            workers = _get(base, "/api/workers", auth)
            time.sleep(0.5)
        assert isinstance(workers, dict) and {n.split("@")[0] for n in workers} == {"io"}
        fleet._start_worker("cpu")  # after Flower's own inspection
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = _get(base, "/api/workers", auth)  # no ?refresh=1
            if isinstance(workers, dict) and len(workers) == 2:
                break
            time.sleep(0.5)
        assert isinstance(workers, dict)
        assert {n.split("@")[0] for n in workers} == {"io", "cpu"}, workers
        queues = _get(base, "/api/queues/length", auth)
        assert isinstance(queues, dict)
        # every class's queues, its lanes' included (tpu has no worker, still listed)
        every = {q for c in cfg.classes.values() for q in c.queues}
        names = {q["name"] for q in queues["active_queues"]}
        assert every <= names, queues
        # and workers' own queues (prefix affinity sends a run's next LLM round there), as
        # Flower learns of them
        assert names - every <= {f"{w}.dq2" for w in workers}, queues

        (flower,) = [c for c in fleet.children if c.name == "flower"]
        flower.proc.kill()
        flower.proc.wait(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "flower" not in fleet.supervise():
            time.sleep(0.5)
        status = 0
        while time.monotonic() < deadline and status != 200:
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(f"{base}/api/workers", auth=auth, timeout=10).status_code
            time.sleep(0.5)
        assert status == 200  # the restarted Flower takes the same password
    again = LocalFleet(cfg, ["io"], flower=True, workdir=tmp_path, say=lambda _: None)
    assert again._flower_auth() and again.flower_auth == ":".join(auth)
