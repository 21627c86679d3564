"""Shared test set-up.

The Celery app reads its configuration from the environment when ``fleet.runtime.app`` is first
imported, so the test broker's address is fixed here, before any test module is collected.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fleet.config import FleetConfig, load_config
from fleet.registry import registry
from fleet.runtime.local import free_port

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


@pytest.fixture(scope="session")
def cfg() -> FleetConfig:
    """The built-in configuration (no file, no environment)."""
    config = load_config(env={})
    registry.load(config.op_modules, config.op_plugins)
    return config


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ~0.5 MB random-weight llama GGUF: the real llama.cpp path in milliseconds."""
    from tests.support.tinyllm import write_tiny_gguf

    return str(write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))
