"""docs/operations.md's private RabbitMQ, run as written: scripts/rabbitmq-local.sh starts a
node with every port on loopback and a user of the fleet's own, the URLs it prints work as
pasted, and Flower's queue view shows the class queues' lengths through the management API."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fleet.config import FleetConfig, load_config
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import app as default_app
from fleet.messaging.app import create_app
from tests.support.servers import need

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-local.sh"


def _listening(pid: int) -> list[str]:
    """The local addresses ``pid`` listens on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


@pytest.mark.timeout(600)
def test_the_private_rabbitmq_recipe(redis_url: str, tmp_path: Path) -> None:
    need("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server")
    password = secrets.token_urlsafe(12)
    ports = {k: str(free_port()) for k in ("AMQP_PORT", "MGMT_PORT", "DIST_PORT", "EPMD_PORT")}
    env = {**os.environ, **ports, "FLEET_AMQP_PASSWORD": password}
    folder = tmp_path / "rabbit"
    res = subprocess.run(
        ["bash", str(SCRIPT), str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert password not in res.stdout + res.stderr  # told how to use it, never shown it
        pasted = dict(re.findall(r'export (\w+)="([^"]+)"', res.stdout))
        urls = {k: v.replace("$FLEET_AMQP_PASSWORD", password) for k, v in pasted.items()}
        assert set(urls) == {"FLEET_BROKER_URL", "FLEET_FLOWER_BROKER_API"}
        node = int((folder / "rabbitmq.pid").read_text())
        epmd = subprocess.run(["pgrep", "-f", f"epmd.*{ports['EPMD_PORT']}"], capture_output=True)
        bound = _listening(node) + [a for p in epmd.stdout.split() for a in _listening(int(p))]
        assert len(bound) >= 4, bound  # AMQP, management, distribution, epmd
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in bound), bound

        backend = redis_url.rsplit("/", 1)[0] + "/7"
        cfg: FleetConfig = load_config(env={}).model_copy(
            update={
                "broker_url": urls["FLEET_BROKER_URL"],
                "result_backend": backend,
                "flower_broker_api": urls["FLEET_FLOWER_BROKER_API"],
                "flower_port": free_port(),
            }
        )
        app = create_app(cfg)
        try:
            _flower_shows_the_backlog(cfg, app, tmp_path)
        finally:
            default_app.set_current()
    finally:
        stop = subprocess.run(
            ["bash", str(SCRIPT), str(folder), "stop"], capture_output=True, text=True, timeout=120
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr


def _flower_shows_the_backlog(cfg: FleetConfig, app: object, tmp_path: Path) -> None:
    with LocalFleet(cfg, ["io"], flower=True, workdir=tmp_path, say=lambda _: None) as fleet:
        for i in range(5):  # `cpu` has no worker here: its messages wait
            app.send_task("fleet.ping", args=(i,), queue="cpu")  # type: ignore[attr-defined]
        auth = tuple(fleet.flower_auth.split(":", 1))
        url = f"http://127.0.0.1:{cfg.flower_port}/api/queues/length"
        deadline, lengths = time.monotonic() + 60, {}
        while time.monotonic() < deadline and lengths.get("cpu") != 5:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                got = httpx.get(url, auth=auth, timeout=10).json()  # type: ignore[arg-type]
                lengths = {q["name"]: q["messages"] for q in got["active_queues"]}
            time.sleep(1)
        assert lengths.get("cpu") == 5 and lengths.get("io") == 0, lengths
