"""A step's start lease, taken as its worker receives the message.

A ``fleet.step`` copy runs its op only once it holds the step's start lease
(:mod:`fleet.store.leases`). Its pool process took it in a Redis round trip of its own before
the op: on every step's path, and on a prefork worker's slot, which runs the next step only
when this one is done. The worker's main process makes a round trip for every message it
takes anyway -- kombu's record of the unacknowledged message -- and where the run store is
the broker's Redis (the same server and database) the begin script goes in it: the lease
costs no round trip of its own. The step's message says what the script needs
(``BEGIN_HEADER``, set by its sender); what it found goes to the pool process with the message
(``BEGUN_HEADER``: the holder token, when, the delivery tag, the reply), and the pool process
holds the lease from there (:func:`workers.recovery.begin`): it renews it while the op runs,
under the same token.

What stays with the pool process: a message that waits in this worker (an ``eta``: a step
sent again for later, or a retry) takes its lease as it starts, as before; so does one whose
lease had lapsed (its holder is judged first: a Redis read this loop does not make), one
that waited here past a third of ``start_lease_s`` before it started (it takes its lease
again, as its holder), and any message whose round trip here failed.

The holder token names this main process, not the pool process, and says it was taken on
receipt (``holders.RECEIVED``). A pool process's death, or its kill at a hard time limit, is
seen here: it is counted and marks the lease ``lost`` (:class:`workers.recovery.StepRequest`).
A lease that lapses while this process lives is judged by whether this worker still holds
the step -- received, waiting or running, as its heartbeat says (:class:`workers.holders.
Holders`): held, it stalled, and no copy runs beside it; not held (the worker dropped the
message unstarted: a lost connection, a restore), a copy takes the lease over, uncounted.
Only the worker's consumer takes leases this way: a message read with ``basic_get`` (the
orphan check draining a gone worker's queue) is not one a pool process here will start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from fleet.constants import BEGIN_HEADER, BEGUN_HEADER, STEP_TASK
from fleet.store.leases import BEGIN_SCRIPT, begin_call, read_text
from workers import holders

log = logging.getLogger("fleet.leases")


class Receipt:
    """Takes the start lease of each ``fleet.step`` message a worker's main process receives,
    in kombu's round trip (:attr:`fleet.messaging.transport.QoS.receipt`)."""

    def __init__(self, hostname: str, lease_s: float, ttl: int) -> None:
        self.hostname = hostname
        self.lease_s, self.ttl = lease_s, ttl
        self._load = True  # load the script first: at the start, and after Redis lost it

    def __call__(self, message: Any, pipe: Any) -> Callable[[list[Any]], None] | None:
        """Add the begin script of ``message``'s step to ``pipe``; returns what to do with
        its replies (None: not a step this process takes the lease of)."""
        headers = message.headers
        if not isinstance(headers, dict):
            return None
        headers.pop(BEGUN_HEADER, None)  # (only this receipt's may reach the pool process)
        ask = headers.get(BEGIN_HEADER)
        if headers.get("task") != STEP_TASK or not isinstance(ask, list) or headers.get("eta"):
            return None
        run_id, path, group, state = ask
        attempt = int(headers.get("retries") or 0)
        token = holders.token(self.hostname, received=True)
        keys, args = begin_call(
            str(run_id), str(path), attempt, token, bool(group), self.hostname, True,
            bool(state), self.lease_s, self.ttl,
        )  # fmt: skip
        load = self._load
        if load:
            pipe.script_load(BEGIN_SCRIPT.text)
        BEGIN_SCRIPT.queue(pipe, keys, args)
        tag = message.delivery_tag

        def taken(replies: list[Any]) -> None:
            reply = replies[-1]
            if isinstance(reply, NoScriptError):
                self._load = True  # (this step takes its lease in its pool process)
                return
            if isinstance(reply, Exception):
                log.warning("run %s: node %s: no start lease on receipt: %s", run_id, path, reply)
                return
            if load:
                self._load = False
            headers[BEGUN_HEADER] = [token, time.time(), tag, read_text(reply)]

        return taken
