"""Runs that wait: park a run on a wait node, resume it on a signal, release it when its time
comes.

A wait node (``wait.signal``, ``wait.for``, ``wait.until``) never becomes a message. When the
engine would send it, it parks the run instead (:meth:`fleet.store.waits.WaitStore.park`):
nothing is queued and no worker holds it, for hours if need be. Whoever ends the wait -- the
client that sends a signal, or the sweep of any worker when a wait's time comes -- writes the
node's outputs in the same Redis script that takes the wait, then moves the run on exactly as
a finished step does (:meth:`Dispatcher.advance`). Everything lives in the run store, so a
parked run outlives every worker and a broker restart with persistence on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fleet.constants import RUN_KEY
from fleet.engine.dispatch import Dispatcher
from fleet.errors import FleetError
from fleet.sdk.waits import SIGNAL_OP
from fleet.store.waits import Signalled
from fleet.workflow.waits import signal_names

log = logging.getLogger("fleet.waits")
MAX_SIGNAL_BYTES = 64 * 1024  # a signal's payload, as JSON
MOST_KEPT = 16  # signals of one name kept for a run before a node waits for them


class SignalError(FleetError):
    """A signal that was refused: nothing was changed."""


def signal(engine: Dispatcher, run_id: str, name: str, data: Any = None) -> Signalled:
    """Send signal ``name`` with ``data`` (JSON-able, at most MAX_SIGNAL_BYTES) to a run: the
    node waiting on it goes on, or the signal is kept for the node that will. SignalError
    for an unknown or ended run, a name no wait node of the run's workflow takes, or a bad
    payload; nothing is changed then."""
    try:
        payload = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SignalError(f"signal '{name}': the data is not JSON ({exc})") from None
    if len(payload.encode()) > MAX_SIGNAL_BYTES:
        raise SignalError(
            f"signal '{name}': {len(payload.encode())} bytes of data (at most "
            f"{MAX_SIGNAL_BYTES}): pass large data by reference (Fleet.upload)"
        )
    digest = engine.store.redis.hget(RUN_KEY.format(id=run_id), "spec")
    if digest is not None:
        names = signal_names(engine.workflow(str(digest)).spec)
        if name not in names:
            known = ", ".join(sorted(names)) or "none: it has no wait.signal node"
            raise SignalError(f"run {run_id} takes no signal '{name}' (it takes: {known})")
    try:
        done = engine.waits.signal(run_id, name, payload, MOST_KEPT)
    except (LookupError, ValueError) as exc:
        raise SignalError(str(exc)) from None
    if done.path is not None and done.since is not None:
        engine.resume(run_id, done.path, SIGNAL_OP, done.since)
    return done


def release_due(engine: Dispatcher, now: float | None = None) -> int:
    """End the waits whose time has come (the sweep's part): a timer goes on, a signal wait
    takes its ``timed_out`` branch or fails its run naming the node. Returns how many."""
    now = time.time() if now is None else now
    store = engine.waits
    ended = 0
    for run_id, path in store.due(now):
        code, wait = store.time_out(run_id, path, now)
        if wait is None:
            continue
        ended += 1
        if code == 1:
            engine.resume(run_id, path, wait.op, wait.since)
            continue
        waited = (wait.until or now) - wait.since
        why = f"node '{path}' ({wait.op}): no signal '{wait.name}' within {waited:g} s"
        engine.fail_wait(run_id, path, wait.op, wait.since, why)
    return ended
