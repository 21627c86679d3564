"""Ops for tests and demos: echo, sleep (an I/O wait), fail."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

from fleet.sdk import current_step, op


@op("test.echo", outputs=("value",))
def echo(value: Any) -> dict[str, Any]:
    """Return the value unchanged."""
    return {"value": value}


@op("test.whereami", outputs=("host", "pid"))
def whereami(tag: Any = None) -> dict[str, Any]:
    """Report the host and process that ran the step."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


@op(
    "test.sleep",
    kind="tool",
    classes=("io", "cpu", "npu-lite", "gpu"),
    outputs=("value", "slept"),
    units=lambda a: float(a.get("seconds", 0.0)),
    unit="second",
    samples=[{"seconds": 0.1}, {"seconds": 0.5}],  # far apart: the fitted slope holds under load
)
def sleep(seconds: float, value: Any = None) -> dict[str, Any]:
    """Wait like an I/O call would, then pass ``value`` on."""
    if not 0 <= seconds <= 3600:
        raise ValueError(f"seconds must be within 0..3600, got {seconds}")
    start = time.perf_counter()
    time.sleep(seconds)
    return {"value": value, "slept": round(time.perf_counter() - start, 4)}


@op("test.spin", classes=("io", "cpu"), outputs=("value", "loops"))
def spin(seconds: float, value: Any = None) -> dict[str, Any]:
    """Compute in pure Python for ``seconds`` without waiting on anything (it holds the GIL
    but for the interpreter's switches), then pass ``value`` on: work that does not yield."""
    if not 0 <= seconds <= 60:
        raise ValueError(f"seconds must be within 0..60, got {seconds}")
    end, loops = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        loops += 1
    return {"value": value, "loops": loops}


@op("test.stubborn", classes=("cpu",), outputs=("value",))
def stubborn(seconds: float, value: Any = None) -> dict[str, Any]:
    """Sleep ``seconds`` through anything raised meanwhile -- a soft time limit included:
    only a hard time limit's kill stops it early."""
    if not 0 <= seconds <= 600:
        raise ValueError(f"seconds must be within 0..600, got {seconds}")
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        with contextlib.suppress(Exception):
            time.sleep(left)
    return {"value": value}


class InjectedFailure(RuntimeError):
    """Raised on purpose by test.fail."""


@op("test.fail", outputs=("value",))
def fail(message: str = "injected failure", value: Any = None) -> dict[str, Any]:
    """Always raise (to test error handling)."""
    raise InjectedFailure(message)


@op("test.crash", outputs=("value",))
def crash(signal: str = "SIGSEGV", value: Any = None) -> dict[str, Any]:
    """Kill this worker process with ``signal`` (to test how the fleet survives a poison step)."""
    import signal as signals

    number = getattr(signals, signal, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown signal {signal!r}")
    os.kill(os.getpid(), number)
    time.sleep(5)  # the signal is delivered; never returns normally
    return {"value": value}


@op("test.step", outputs=("key", "attempt", "has_deadline"))
def step_context(value: Any = None) -> dict[str, Any]:
    """What the op SDK says about the step this op runs for (fleet.sdk.current_step)."""
    step = current_step()
    if step is None:
        return {"key": None, "attempt": None, "has_deadline": False}
    return {
        "key": step.idempotency_key,
        "attempt": step.attempt,
        "has_deadline": bool(step.deadline),
    }
