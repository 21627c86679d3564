"""Stock Celery, for baselines: kombu's own Redis transport and Celery's own Redis result
backend, configured as the fleet's workers are (JSON, late acknowledgement, prefetch 1, task
events as asked), in workers started the way a Celery user starts them.

The fleet's own app changes two things of the stack under every task it sends or runs (one
Redis client per channel instead of one per publish: fleet/messaging/transport.py; a result
backend built without re-reading package metadata: fleet/messaging/backend.py). A plain task
on the fleet's workers gets them too; this baseline does not.

Imported by its workers as ``celery -A stock_celery:app`` (``STOCK_CELERY=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUEUES = ("stock-cpu", "stock-io")


def make_app(broker_url: str, events: bool) -> Any:
    from celery import Celery

    app = Celery("stock", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,  # as the fleet's app: a STARTED state for every task
        task_send_sent_event=events,
        worker_send_task_events=events,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    app.task(name="stock.ping")(ping)
    return app


def ping(value: Any = None) -> Any:
    """The baseline's task: returns what it was given."""
    return value


if os.environ.get("STOCK_CELERY"):  # imported by the baseline's workers
    app = make_app(os.environ["FLEET_BROKER_URL"], os.environ.get("STOCK_EVENTS") == "1")


def start_workers(broker_url: str, events: bool, logs: Path) -> list[subprocess.Popen[bytes]]:
    """One worker per queue, as the fleet's cpu and io presets run: prefork x cores on
    ``stock-cpu``, threads x 1000 on ``stock-io``."""
    env = {**os.environ, "STOCK_CELERY": "1", "FLEET_BROKER_URL": broker_url}
    env |= {"STOCK_EVENTS": "1" if events else "0", "PYTHONPATH": str(HERE)}
    procs = []
    for queue, pool, size in (("stock-cpu", "prefork", os.cpu_count() or 1),
                              ("stock-io", "threads", 1000)):  # fmt: skip
        argv = [sys.executable, "-m", "celery", "-A", "stock_celery:app", "worker", "-Q", queue]
        argv += ["-P", pool, "-c", str(size), "-n", f"{queue}@%h", "-l", "WARNING"]
        argv += ["--without-mingle", "--without-gossip"] + (["-E"] if events else [])
        log = (logs / f"{queue}.log").open("ab")
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_ready(app: Any, timeout: float = 60.0) -> None:
    """Until a ping answers on each queue."""
    for queue in QUEUES:
        app.signature("stock.ping", args=(1,)).apply_async(queue=queue).get(timeout=timeout)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
