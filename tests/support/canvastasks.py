"""A Celery user's own tasks for the differential canvas suite (tests/support/canvas_cases.py),
adapted from Celery's t/integration/tasks.py: plain ``shared_task`` functions that import
nothing of the fleet. Both the user's worker (tests/support/canvas_user.py) and the fleet's
workers (``task_modules`` in tests/fleet-test.toml) have them.

``twin_add``, ``twin_echo`` and ``twin_fail`` are the plain twins of the suite's workflows:
each returns what its workflow's outputs are, and takes a chained value as a workflow
signature does (docs/workflows.md: keywords win, a dict fills inputs by key, any other value
goes to the first input the keywords left open).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import redis
from celery import shared_task


@shared_task(name="canvastasks.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="canvastasks.identity")
def identity(x: Any) -> Any:
    return x


@shared_task(name="canvastasks.pick")
def pick(value: dict[str, Any], key: str = "n") -> Any:
    return value[key]


@shared_task(name="canvastasks.inputs_of")
def inputs_of(n: int, y: int) -> dict[str, int]:
    """A dict whose keys are the add workflow's inputs."""
    return {"n": n, "y": y}


@shared_task(name="canvastasks.fail")
def fail(*args: Any, **kwargs: Any) -> None:
    raise ValueError("expected failure")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["FLEET_BROKER_URL"])


@shared_task(name="canvastasks.record")
def record(value: Any, key: str) -> Any:
    """A link: note the value it was called with where the test reads it."""
    _redis().rpush(key, json.dumps(value))
    _redis().expire(key, 120)
    return value


@shared_task(name="canvastasks.record_id")
def record_id(task_id: str, key: str) -> None:
    """An errback, the old form: called with the failed task's id."""
    record(task_id, key)


@shared_task(name="canvastasks.record_request")
def record_request(request: Any, exc: Any, traceback: Any, key: str) -> None:
    """An errback, the new form: called with the failed request and its exception."""
    record(request.id, key)


def _inputs(
    names: Sequence[str], defaults: dict[str, Any], args: Sequence[Any], given: dict[str, Any]
) -> dict[str, Any]:
    values = dict(given)
    if args:
        value = args[0]
        if isinstance(value, dict):
            values = {**value, **given}
        else:
            values[next(n for n in names if n not in given)] = value
    return {**defaults, **values}


@shared_task(name="canvastasks.twin_add")
def twin_add(*args: Any, **given: Any) -> dict[str, Any]:
    """The add workflow's twin: inputs n and y (default 0), output n = n + y."""
    values = _inputs(("n", "y"), {"y": 0}, args, given)
    return {"n": values["n"] + values["y"]}


@shared_task(name="canvastasks.twin_echo")
def twin_echo(*args: Any, **given: Any) -> dict[str, Any]:
    """The echo workflow's twin: input v, output v."""
    return {"v": _inputs(("v",), {}, args, given)["v"]}


@shared_task(name="canvastasks.twin_fail")
def twin_fail(*args: Any, **given: Any) -> None:
    """The failing workflow's twin."""
    raise ValueError("expected failure")


@shared_task(name="canvastasks.where", bind=True)
def where(self: Any, *args: Any) -> str:
    """The worker that ran it (its node name)."""
    return str(self.request.hostname)
