"""Shared test set-up.

The Celery app reads its configuration from the environment when ``fleet.app`` is first
imported, so the test broker's address is fixed here, before any test module is collected.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fleet.config import FleetConfig, load_config
from fleet.ops import registry

TESTS = Path(__file__).parent
TEST_CONFIG = TESTS / "fleet-test.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_configure(config: pytest.Config) -> None:
    port = free_port()
    os.environ["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    os.environ.pop("FLEET_RESULT_BACKEND", None)
    os.environ["FLEET_CONFIG"] = str(TEST_CONFIG)


@pytest.fixture(scope="session")
def cfg() -> FleetConfig:
    """The built-in configuration (no file, no environment)."""
    config = load_config(env={})
    registry.load_modules(config.op_modules)
    return config
