"""A password-protected Redis end to end: `fleet up`'s local fleet starts it with requirepass,
workers and client use it, and nothing the fleet prints shows the password."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECRET = "s3cret-broker-pw"


def test_password_protected_redis(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    cfg = fleet_cfg.model_copy(update={"broker_url": url})
    said: list[str] = []
    with LocalFleet(cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=said.append):
        with pytest.raises(redis.AuthenticationError):  # the server asks for the password
            redis.Redis.from_url(url.replace(f":{SECRET}@", "@")).ping()
        client = Fleet(app=create_app(cfg), cfg=cfg)
        wf = Workflow("locked", inputs=["t"])
        wf.output("out", wf.step("up", "text.upper", text=wf.input("t"))["text"])
        assert client.submit(wf, {"t": "ok"}).get(timeout=30) == {"out": "OK"}
    assert said and not any(SECRET in line for line in said)
    assert any("****" in line for line in said)
