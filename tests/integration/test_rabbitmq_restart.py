"""RabbitMQ with quorum queues and publisher confirms (`amqp_queues = "quorum"`): the node
restarted in the middle of 30 three-step runs, and none is lost or hangs. RabbitMQ takes a
message and records it as unacknowledged in one step, so the Redis transport's window (see
test_orphans.py) does not exist here; what a restart tests is the rest: confirmed publishes,
durable replicated queues, redelivery of what workers held, and reconnection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kombu import Queue

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import load_config
from fleet.deploy.local import LocalFleet
from fleet.messaging.app import create_app
from tests.support.restarts import assert_every_step_ran
from tests.support.servers import start_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quorum_queues_lose_no_run_through_a_broker_restart(redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "rabbitmq"
    folder.mkdir()
    server = start_rabbitmq(folder)
    ports = (server.port, int(server.extra["dist"]), int(server.extra["epmd"]))
    update = {
        "broker_url": f"amqp://guest:guest@127.0.0.1:{server.port}//",
        "result_backend": redis_url.rsplit("/", 1)[0] + "/6",
        "amqp_queues": "quorum",
    }
    cfg = load_config().model_copy(update=update)
    wf = Workflow("through-rabbit-restart", inputs=["t"])
    a = wf.step("a", "test.sleep", seconds=0.3, value=wf.input("t"), classes=["io"])
    b = wf.step("b", "text.upper", text=a["value"], classes=["cpu"])
    c = wf.step("c", "test.sleep", seconds=0.2, value=b["text"], classes=["io"])
    wf.output("out", c["value"])
    fleet = LocalFleet(
        cfg,
        ["cpu", "io"],
        flower=False,
        workdir=tmp_path / "fleet",
        say=lambda _: None,
        env={"FLEET_AMQP_QUEUES": "quorum"},
    )
    try:
        fleet.start(wait=90)
        client = Fleet(app=create_app(cfg), cfg=cfg)
        assert client.run(wf, {"t": "warm"}, timeout=60) == {"out": "WARM"}
        with client.app.connection_for_write() as conn:  # the class queues are quorum queues
            for name in ("cpu", "io"):
                queue = Queue(name, durable=True, queue_arguments={"x-queue-type": "quorum"})
                queue(conn.default_channel).declare()  # refused if it were another type
        runs = [client.submit(wf, {"t": f"run {i}"}) for i in range(30)]
        time.sleep(0.5)  # some runs finished, some mid-step, most queued
        server.stop()
        server = start_rabbitmq(folder, ports)
        lost = [i for i, r in enumerate(runs) if r.get(timeout=180) != {"out": f"RUN {i}"}]
        assert lost == []
        running = sum(cfg.classes[c].concurrency for c in ("cpu", "io"))
        # The leases live in the run store's Redis, which stays up: no step ran twice.
        assert_every_step_ran(runs, {"a", "b", "c"}, running, twice_allowed=False)
        assert client.run(wf, {"t": "after"}, timeout=60) == {"out": "AFTER"}
    finally:
        fleet.stop()
        server.stop()
        from fleet.messaging.app import app

        app.set_current()
