"""Shared test set-up.

The Celery app reads its configuration from the environment when ``fleet.messaging.app`` is first
imported, so the test broker's address is fixed here, before any test module is collected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.config import FleetConfig, load_config
from fleet.deploy.local import free_port
from fleet.sdk.registry import registry

TESTS = Path(__file__).parent
TEST_CONFIG = TESTS / "fleet-test.toml"


def pytest_configure(config: pytest.Config) -> None:
    port = free_port()
    os.environ["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    os.environ.pop("FLEET_RESULT_BACKEND", None)
    os.environ["FLEET_CONFIG"] = str(TEST_CONFIG)
    # Models assembled and indexes written by this run stay in this run.
    os.environ["FLEET_DATA_DIR"] = tempfile.mkdtemp(prefix="fleet-test-data-")
    # Test servers listen on random local ports; the fleet's own services stay refused.
    os.environ["FLEET_HTTP_ALLOW"] = "127.0.0.1:*,localhost:*"
    # The test PostgreSQL server's port, fixed now so the fleet's workers may reach it.
    pg_port = free_port()
    os.environ["FLEET_TEST_PG_PORT"] = str(pg_port)
    os.environ["FLEET_DB_ALLOW"] = f"127.0.0.1:{pg_port}"


@pytest.fixture(scope="session")
def cfg() -> FleetConfig:
    """The built-in configuration (no file, no environment)."""
    config = load_config(env={})
    registry.load(config.op_modules, config.op_plugins)
    return config


@pytest.fixture(scope="session")
def tiny_gguf() -> str:
    """A ~0.5 MB random-weight llama GGUF: the real llama.cpp path in milliseconds."""
    from fleet.sdk.process import data_dir
    from tests.support.tinyllm import write_tiny_gguf

    # under the data folder: a model named by path must lie under the file roots
    return str(write_tiny_gguf(data_dir("test-models") / "tiny.gguf"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server at the configured broker URL (started here unless one answers):
    the run store and the artifact store that unit tests of worker-side code use. The
    integration fleet finds it running and uses it."""
    from fleet.deploy.local import broker_reachable

    url = os.environ["FLEET_BROKER_URL"]
    if broker_reachable(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `bash scripts/setup.sh`")
    port = url.rsplit(":", 1)[1].split("/")[0]
    folder = str(tmp_path_factory.mktemp("redis"))
    argv = [binary, "--port", port, "--save", "", "--appendonly", "no", "--dir", folder]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not broker_reachable(url, timeout=0.2):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)
