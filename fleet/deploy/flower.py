"""Flower as `fleet up` runs it: Celery's own ``celery flower`` with two additions.

- Flower asks the workers who they are (``inspect``) once, when it starts: a worker that
  started after it stayed out of ``/api/workers`` and of the queues ``/api/queues/length``
  lists until someone asked for ``?refresh=1``. Here a worker that comes online, or beats
  its heart while Flower still knows nothing of it, is inspected as it appears (once; a
  worker that does not answer is asked again at its next heartbeat).
- Flower's queue view lists the queues its workers consume from; here every class queue of
  the fleet's configuration too, so a class with a backlog and no worker shows (on RabbitMQ
  the view needs the management API: ``flower_broker_api``)::

    python -m fleet.deploy.flower --port=5555 --address=127.0.0.1
"""

from __future__ import annotations

import sys
from typing import Any

from fleet.deploy.launch import APP

WORKER_EVENTS = ("worker-online", "worker-heartbeat")


def watch_new_workers(flower: Any) -> None:
    """Inspect each worker Flower hears of but has not inspected (``flower``: its app)."""
    events, inspector = flower.events, flower.inspector
    handle = events.on_event

    def on_event(event: dict[str, Any]) -> None:  # on the events thread
        handle(event)
        host = event.get("hostname")
        known = inspector.workers.get(host, {})
        if event.get("type") in WORKER_EVENTS and host and "active_queues" not in known:
            flower.io_loop.add_callback(flower.update_workers, host)

    events.on_event = on_event


def list_every_class_queue(handler: Any, queues: list[str]) -> None:
    """Make ``handler`` (Flower's base view) list ``queues`` beside its workers' queues."""
    found = handler.get_active_queue_names

    def names(self: Any) -> list[str]:
        return sorted(set(found(self)) | set(queues))

    handler.get_active_queue_names = names


def main(argv: list[str] | None = None) -> None:
    from celery.bin.celery import main as celery
    from flower.app import Flower
    from flower.views import BaseHandler

    from fleet.config import load_config

    list_every_class_queue(
        BaseHandler, [q for c in load_config().classes.values() for q in c.queues]
    )
    start = Flower.start

    def start_watching(self: Any) -> None:
        watch_new_workers(self)
        start(self)

    Flower.start = start_watching
    sys.argv = ["celery", "-A", APP, "flower", *(sys.argv[1:] if argv is None else argv)]
    celery()


if __name__ == "__main__":
    main()
