"""A real fleet for integration tests: a Redis server on a free port and one real Celery
worker process per class (gpu, npu-lite, cpu, io). The extra class ``tpu`` from
tests/fleet-test.toml is configured but deliberately has no worker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.config import FleetConfig, load_config
from fleet.deploy.local import LocalFleet

SERVED = ["gpu", "npu-lite", "cpu", "io"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fleet_cfg() -> FleetConfig:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `bash scripts/setup.sh` (or .ci/run)")
    return load_config()  # FLEET_BROKER_URL / FLEET_CONFIG were set by tests/conftest.py


@pytest.fixture(scope="session")
def local_fleet(
    fleet_cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    workdir = Path(tmp_path_factory.mktemp("fleet"))
    fleet = LocalFleet(
        fleet_cfg, SERVED, flower=False, workdir=workdir, loglevel="INFO", say=lambda _: None
    )
    fleet.start(wait=90)
    yield fleet
    fleet.stop()
    if os.environ.get("FLEET_KEEP_LOGS"):
        print(f"fleet logs in {workdir / 'logs'}")


@pytest.fixture(autouse=True)
def _fleet_app_is_current() -> None:
    """Plain shared tasks bind to Celery's current app: the test fleet's, even after a test
    made an app of its own (create_app makes the new app the current one)."""
    from fleet.messaging.app import app

    app.set_current()


@pytest.fixture()
def client(local_fleet: LocalFleet):  # type: ignore[no-untyped-def]
    from fleet.client.client import Fleet

    return Fleet()


@pytest.fixture()
def broker(fleet_cfg: FleetConfig, local_fleet: LocalFleet) -> redis.Redis:
    return redis.Redis.from_url(fleet_cfg.broker_url, decode_responses=True)
