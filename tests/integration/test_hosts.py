"""Two hosts, one fleet: workers with separate data folders (each its own "disk") on one
broker. A knowledge-base index built on one host is searched on the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from fleet.messaging.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_index_built_on_one_host_is_searched_on_another(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    host_a = {"FLEET_DATA_DIR": str(tmp_path / "host-a")}
    host_b = {"FLEET_DATA_DIR": str(tmp_path / "host-b")}
    a = LocalFleet(cfg, ["cpu"], False, tmp_path / "a", "INFO", say=lambda s: None, env=host_a)
    b = LocalFleet(cfg, ["io"], False, tmp_path / "b", "INFO", say=lambda s: None, env=host_b)
    with a, b:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        wf = Workflow("two-hosts")
        docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(["returns", "warranty"])]
        vectors = [[1.0, 0.0], [0.0, 1.0]]
        built = wf.step(
            "build",
            "memory.index",
            name="shared-kb",
            documents=docs,
            vectors=vectors,
            classes=["cpu"],
        )
        found = wf.step(
            "find",
            "memory.search",
            name=built["name"],
            version=built["version"],
            vector=[0.0, 1.0],
            k=1,
            classes=["io"],
        )
        wf.output("ids", found["ids"])
        run = client.submit(wf)
        assert run.get(timeout=60) == {"ids": ["d1"]}
        ran = {e.node: e.worker for e in run.trace() if e.status == "succeeded"}
        assert ran["build"].startswith("cpu@") and ran["find"].startswith("io@")
    assert (tmp_path / "host-b" / "artifacts" / "index" / "shared-kb").is_dir()  # fetched
