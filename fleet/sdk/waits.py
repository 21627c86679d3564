"""The ops a run waits on: ``wait.signal`` (a person, a webhook), ``wait.for`` (seconds) and
``wait.until`` (a time). The engine keeps them itself: a run that reaches one parks -- no
message, no worker slot -- until a signal or its time comes (see :mod:`fleet.engine.waits`).
Declared here, beside the other ops, so that workflows validate against them everywhere.
"""

from __future__ import annotations

from typing import Any

from fleet.constants import WAIT_OP_PREFIX
from fleet.errors import FleetError

SIGNAL_OP = f"{WAIT_OP_PREFIX}signal"
FOR_OP = f"{WAIT_OP_PREFIX}for"
UNTIL_OP = f"{WAIT_OP_PREFIX}until"


def _kept_by_the_engine(**_: Any) -> dict[str, Any]:
    raise FleetError("a wait op is kept by the engine (the run parks), never run by a worker")


def wait_signal(name: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Park the run until signal ``name`` arrives (``fleet signal``), or ``timeout_s`` passes.

    Outputs: ``data`` (the signal's JSON payload, None on a timeout) and ``timed_out``.
    """
    return _kept_by_the_engine()


def wait_for(seconds: float) -> dict[str, Any]:
    """Park the run for ``seconds``; output ``at``: when it went on (Unix time)."""
    return _kept_by_the_engine()


def wait_until(at: float | str) -> dict[str, Any]:
    """Park the run until ``at`` (Unix time, or ISO 8601 with a zone); output ``at``."""
    return _kept_by_the_engine()


# op -> (its function, its outputs, its required params)
WAIT_OPS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    SIGNAL_OP: (wait_signal, ("data", "timed_out"), ("name",)),
    FOR_OP: (wait_for, ("at",), ("seconds",)),
    UNTIL_OP: (wait_until, ("at",), ("at",)),
}
