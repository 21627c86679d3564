"""RabbitMQ as the broker (Redis stays the run store): queue depth is read from the broker
and the spill-over routing tests pass as they do on Redis. A real rabbitmq-server is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.client.client import Fleet
from fleet.config import FleetConfig, load_config
from fleet.deploy.local import LocalFleet
from fleet.messaging.app import create_app
from fleet.routing.state import StateReader
from tests.integration import test_priority
from tests.integration.conftest import SERVED
from tests.integration.test_spill import (
    test_a_queue_filled_by_another_client_is_read_from_the_broker,
    test_cost_sla_keeps_cheap_class_until_the_sla_needs_more,
    test_flooded_class_spills_to_another_eligible_class,
)
from tests.support.servers import start_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = [  # run here again, on RabbitMQ
    "test_a_queue_filled_by_another_client_is_read_from_the_broker",
    "test_cost_sla_keeps_cheap_class_until_the_sla_needs_more",
    "test_flooded_class_spills_to_another_eligible_class",
]


@pytest.fixture(scope="module")
def rabbit_cfg(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetConfig]:
    server = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    # Its own Redis database for runs and heartbeats: the Redis-broker fleet's workers
    # must not show up as this fleet's.
    backend = redis_url.rsplit("/", 1)[0] + "/5"
    url = f"amqp://guest:guest@127.0.0.1:{server.port}//"
    yield load_config().model_copy(update={"broker_url": url, "result_backend": backend})
    server.stop()


@pytest.fixture(scope="module")
def rabbit_fleet(
    rabbit_cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    workdir = Path(tmp_path_factory.mktemp("rabbit-fleet"))
    fleet = LocalFleet(rabbit_cfg, SERVED, flower=False, workdir=workdir, say=lambda _: None)
    fleet.start(wait=90)
    yield fleet
    fleet.stop()


@pytest.fixture()
def client(rabbit_fleet: LocalFleet) -> Fleet:
    return Fleet(app=create_app(rabbit_fleet.cfg), cfg=rabbit_fleet.cfg)


def test_depth_is_read_from_rabbitmq(client: Fleet) -> None:
    # `tpu` has no worker: what is sent there stays queued, as RabbitMQ counts it
    for i in range(5):
        client.app.send_task("fleet.ping", args=(i,), queue="tpu")
    state = StateReader(client.cfg).read()
    assert state.depth["tpu"] == 5 and state.depth["gpu"] == 0
    env = {
        **os.environ,
        "FLEET_BROKER_URL": client.cfg.broker_url,
        "FLEET_RESULT_BACKEND": client.cfg.backend_url,
    }
    shown = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["tpu"]["depth"] == 5, doc
    with client.app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("tpu") == 5


def test_a_higher_priority_run_overtakes_the_queue_on_rabbitmq(client: Fleet) -> None:
    """RabbitMQ serves message priority 9 first, Redis 0: the fleet's priority means the
    same on both (defined last: its long steps must not precede the spill tests)."""
    test_priority.test_a_higher_priority_run_overtakes_the_queue(client)
