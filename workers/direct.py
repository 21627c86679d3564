"""Workers' own queues (Celery's ``worker_direct``): where prefix affinity sends a run's next
LLM round, and what happens to those messages when their worker is gone.

A step in a class queue is taken by whichever worker of the class is free; a step in a
worker's own queue waits for that one worker. If it dies (or stops) first, its steps would
wait for a worker of that name forever. So every worker announces that it has such a queue
(``DIRECT_WORKERS_KEY``), and the sweep's turn-taker drains the queue of every announced
worker that no longer beats: each step is sent again, routed afresh without the dead worker
(:func:`fleet.routing.affinity.forget`), then its old message is acknowledged -- a crash in
between leaves the old message unacked, and the sweeper puts it back. Both brokers: kombu
takes the messages off one at a time, as a consumer would.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

from fleet.constants import DIRECT_WORKERS_KEY, STEP_TASK
from fleet.engine.dispatch import Dispatcher
from fleet.routing import affinity

log = logging.getLogger("fleet.direct")


def drain_gone(app: Celery, client: redis.Redis, engine: Dispatcher, live: set[str]) -> int:
    """Send again the steps waiting in the queues of announced workers not in ``live``;
    returns how many. A gone worker's queue, once empty, is no longer watched."""
    moved = 0
    for host in sorted(str(h) for h in client.smembers(DIRECT_WORKERS_KEY)):
        if host in live:
            continue
        sent, empty = drain(app, engine, host)
        moved += sent
        if empty:
            client.srem(DIRECT_WORKERS_KEY, host)
    return moved


def drain(app: Celery, engine: Dispatcher, host: str) -> tuple[int, bool]:
    """Route again every fleet step in ``host``'s own queue: (how many, whether it is empty)."""
    queue = affinity.direct_queue(engine.cfg, host)
    sent = 0
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue, no_ack=False)
        try:
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    return sent, True
                if not _resend(engine, host, message):
                    message.requeue()  # not a fleet step: leave it to its worker
                    return sent, False
                message.ack()
                sent += 1
        finally:
            simple.close()


def _resend(engine: Dispatcher, host: str, message: Any) -> bool:
    headers = message.headers or {}
    if headers.get("task") != STEP_TASK:
        return False
    try:
        _, kwargs, _ = message.decode()
        call, run = kwargs["call"], kwargs["run"]
    except (KeyError, TypeError, ValueError):
        return False
    log.warning(
        "run %s: step %s waited for %s, which is gone: routed again",
        run.get("id"),
        call.get("path"),
        host,
    )
    engine.send(call, affinity.forget(run, host))
    return True
