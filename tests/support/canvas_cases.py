"""The differential canvas suite's harness; its cases, adapted from Celery's
t/integration/test_canvas.py, are in canvas_chains.py and canvas_chords.py.

Each case builds a canvas from the user's plain tasks (tests/support/canvastasks.py) and three
stand-ins -- ``t.add``, ``t.echo``, ``t.fail`` -- that are either the plain twins
(``twin_add``, ...) or workflows (tests/integration/test_canvas_semantics.py), runs it on
Celery's current app and returns what it observed: the result, or the kind of error, and what
links and errbacks saw. The plain twins' observation is the expected value of the workflows'.

This module imports nothing of the fleet: ``python -m tests.support.canvas_cases`` runs every
plain twin on the user's app alone and prints the observations as JSON.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeout

from tests.support import canvastasks as ct

T = 10.0  # every wait: a case that needs longer is a failure


@dataclass(frozen=True)
class Twins:
    """What the cases call ``t``: objects with ``.s(**kw)`` and ``.si(**kw)``, plain tasks or
    workflows."""

    add: Any  # inputs n, y (default 0); result {"n": n + y}
    echo: Any  # input v; result {"v": v}
    fail: Any  # input v; always fails


PLAIN = Twins(add=ct.twin_add, echo=ct.twin_echo, fail=ct.twin_fail)


def _kind(exc: BaseException) -> str:
    """An error as the suite compares it: Celery's own by name, a task's by kind only (a
    failed run raises WorkflowFailed where its twin raised ValueError)."""
    if isinstance(exc, CeleryTimeout):
        raise exc  # never an expected outcome
    return type(exc).__name__ if type(exc).__module__.startswith("celery") else "task error"


def _value(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"error": _kind(value)}
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    return value


def get(result: Any, **kwargs: Any) -> Any:
    """``result.get``, an error as its kind."""
    try:
        return _value(result.get(timeout=T, **kwargs))
    except Exception as exc:
        return {"error": _kind(exc)}


def settled(result: Any) -> str:
    """A result's state once it is ready (waited for, up to ``T``): a chain's ``get`` raises
    as soon as an earlier task failed, before the failure reaches the later ones."""
    deadline = time.monotonic() + T
    while result.state not in states.READY_STATES and time.monotonic() < deadline:
        time.sleep(0.05)
    return str(result.state)


def recorded(key: str, count: int) -> list[Any]:
    """What the ``record`` links and errbacks noted under ``key``: at least ``count`` entries,
    waited for."""
    client = ct._redis()
    deadline = time.monotonic() + T
    while client.llen(key) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(v) for v in client.lrange(key, 0, -1)]


def new_key() -> str:
    return f"canvas-case:{uuid.uuid4().hex}"


Case = Callable[[Twins], Any]
CASES: dict[str, Case] = {}
MODULES = ("tests.support.canvas_chains", "tests.support.canvas_chords")


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def all_cases() -> dict[str, Case]:
    """Every case, by name (the case modules register theirs when imported)."""
    for module in MODULES:
        importlib.import_module(module)
    return CASES


def run_all(twins: Twins, names: list[str] | None = None) -> dict[str, Any]:
    """Every case (or those named) on the current app, as JSON values."""
    out: dict[str, Any] = {}
    for name in names or list(all_cases()):
        try:
            out[name] = json.loads(json.dumps(CASES[name](twins)))
        except CeleryTimeout:
            out[name] = "TIMEOUT"
    return out


def main() -> None:
    """The plain twins on the user's app alone, the fleet never imported: JSON on stdout."""
    from tests.support.canvas_user import app

    app.set_current()
    observed = run_all(PLAIN, sys.argv[1:] or None)
    assert not any(m.startswith("fleet") for m in sys.modules), "the fleet was imported"
    print(json.dumps(observed))


if __name__ == "__main__":  # run as the module the case modules register with, not __main__
    importlib.import_module("tests.support.canvas_cases").main()
