"""The sweeper restores what sits in a Redis broker's ``unacked`` hash; a RabbitMQ broker has
none, and the sweep must neither fail there nor keep the orphan check after it from running
(on both brokers that check routes again the steps waiting in a gone worker's own queue)."""

from __future__ import annotations

import json
import time

import redis

from fleet.config import FleetConfig
from fleet.constants import WORKER_INFO_KEY
from fleet.deploy.local import free_port
from fleet.messaging.app import create_app
from workers.sweeper import sweep


def test_a_rabbitmq_fleet_has_nothing_to_sweep(redis_url: str, cfg: FleetConfig) -> None:
    backend = redis_url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(backend, decode_responses=True)
    # nobody listens there: a sweep that went to the broker would fail, as it did every 4 s
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    app = create_app(cfg.model_copy(update={"broker_url": broker, "result_backend": backend}))
    app.conf.broker_connection_timeout = 1
    app.conf.broker_connection_max_retries = 0
    info = {"last_seen": time.time(), "held": []}  # a live worker that holds nothing
    client.hset(WORKER_INFO_KEY, "cpu-1@host", json.dumps(info))
    try:
        assert sweep(app, client, worker_ttl=30, grace_s=4) == 0
    finally:
        client.delete(WORKER_INFO_KEY)
