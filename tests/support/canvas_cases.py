"""The differential canvas suite's cases, adapted from Celery's t/integration/test_canvas.py.

Each case builds a canvas from the user's plain tasks (tests/support/canvastasks.py) and three
stand-ins -- ``t.add``, ``t.echo``, ``t.fail`` -- that are either the plain twins
(``twin_add``, ...) or workflows (tests/integration/test_canvas_semantics.py), runs it on
Celery's current app and returns what it observed: the result, or the kind of error, and what
links and errbacks saw. The plain twins' observation is the expected value of the workflows'.

This module imports nothing of the fleet: ``python -m tests.support.canvas_cases`` runs every
plain twin on the user's app alone and prints the observations as JSON.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import chain, chord, current_app, group
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


def recorded(key: str, count: int) -> list[Any]:
    """What the ``record`` links and errbacks noted under ``key``: at least ``count`` entries,
    waited for."""
    client = ct._redis()
    deadline = time.monotonic() + T
    while client.llen(key) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [json.loads(v) for v in client.lrange(key, 0, -1)]


def _key() -> str:
    return f"canvas-case:{uuid.uuid4().hex}"


Case = Callable[[Twins], Any]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


# -- chains (test_simple_chain, test_single_chain, test_complex_chain, test_nested_chain) --


@case
def chain_simple(t: Twins) -> Any:
    return get(chain(t.add.s(n=2, y=2), t.add.s(y=4), t.add.s(y=8)).apply_async())


@case
def chain_single(t: Twins) -> Any:
    return get(chain(t.add.s(n=3, y=3)).apply_async())


@case
def chain_between_plain_tasks(t: Twins) -> Any:
    return get(chain(ct.identity.s(4), t.add.s(y=1), ct.pick.s()).apply_async())


@case
def chain_complex(t: Twins) -> Any:
    canvas = chain(ct.add.s(2, 2), ct.add.s(4), t.add.s(y=8), ct.pick.s(), ct.add.s(16))
    return get(canvas.apply_async())


@case
def chain_nested(t: Twins) -> Any:
    inner = chain(t.add.s(y=3), ct.pick.s())
    return get(chain(t.add.s(n=1, y=1), chain(t.add.s(y=2), inner)).apply_async())


@case
def chain_immutable_ignores_the_chained_value(t: Twins) -> Any:
    return get(chain(ct.add.s(1, 1), t.add.si(n=10, y=1), ct.pick.s()).apply_async())


@case
def chain_immutable_after_a_stand_in(t: Twins) -> Any:
    return get(chain(t.add.s(n=1, y=1), ct.identity.si(7)).apply_async())


@case
def chain_a_dict_fills_by_key(t: Twins) -> Any:
    return get(chain(ct.inputs_of.s(3, 4), t.add.s()).apply_async())


@case
def chain_parent_results(t: Twins) -> Any:
    result = chain(ct.identity.s(2), t.add.s(y=1), ct.pick.s()).apply_async()
    value = get(result)
    return [value, get(result.parent), get(result.parent.parent)]


@case
def chain_partial_args(t: Twins) -> Any:
    return get(chain(t.add.s(y=1), ct.pick.s()).apply_async(args=(4,)))


# -- partial arguments on a signature (Signature.apply_async, delay, clone) ------------------


@case
def partial_args(t: Twins) -> Any:
    return get(t.add.s(y=2).apply_async(args=(5,)))


@case
def partial_kwargs(t: Twins) -> Any:
    return get(t.add.s(n=5).apply_async(kwargs={"y": 2}))


@case
def partial_kwargs_win_over_the_signature(t: Twins) -> Any:
    return get(t.add.s(n=5, y=1).apply_async(kwargs={"y": 3}))


@case
def partial_kwargs_ignored_by_immutable(t: Twins) -> Any:
    return get(t.add.si(n=5, y=1).apply_async(kwargs={"y": 3}))


@case
def partial_kwargs_by_delay_and_clone(t: Twins) -> Any:
    cloned = t.add.s(n=1).clone(kwargs={"y": 2})
    return [get(t.add.s(n=1).delay(y=5)), get(cloned.delay()), get(t.add.s(y=1).delay(6))]


@case
def countdown(t: Twins) -> Any:
    started = time.monotonic()
    value = get(t.add.s(n=1, y=1).apply_async(countdown=1))
    return [value, time.monotonic() - started >= 0.9]


# -- groups (test_group_results_in_chain, test_nested_group_chain, ...) ------------------------


@case
def group_of_stand_ins(t: Twins) -> Any:
    return get(group(t.add.s(n=1, y=1), t.add.s(n=2, y=2), t.echo.s(v="x")).apply_async())


@case
def group_a_plain_task_first(t: Twins) -> Any:
    return get(group(ct.add.si(1, 1), t.add.si(n=1, y=1)).apply_async())


@case
def group_a_stand_in_first(t: Twins) -> Any:
    return get(group(t.add.si(n=1, y=1), ct.add.si(1, 1)).apply_async())


@case
def group_nested_plain_only(t: Twins) -> Any:
    inner = chain(ct.identity.si(5), group(ct.identity.si(3), ct.identity.si(4)))
    return get(group(ct.identity.si(1), ct.identity.si(2), inner).apply_async())


@case
def group_nested(t: Twins) -> Any:
    inner = chain(ct.identity.si(5), group(t.echo.si(v=3), ct.identity.si(4)))
    return get(group(t.add.si(n=1, y=0), ct.identity.si(2), inner).apply_async())


@case
def group_in_a_chain(t: Twins) -> Any:
    return get(chain(t.add.s(n=1, y=1), group(t.add.s(y=1), t.add.s(y=2))).apply_async())


@case
def group_of_chains(t: Twins) -> Any:
    canvas = group(chain(t.add.s(n=1, y=1), ct.pick.s()), chain(ct.identity.s(3), t.add.s(y=1)))
    return get(canvas.apply_async())


@case
def group_partial_args(t: Twins) -> Any:
    return get(group(t.add.s(y=1), t.echo.s(), ct.identity.s()).apply_async(args=(3,)))


# -- GroupResult API (test_groupresult_save_restore, GroupResult children, counts) ----------


@case
def groupresult_save_and_restore(t: Twins) -> Any:
    result = group(t.add.si(n=1, y=1), ct.add.si(2, 2)).apply_async()
    result.save()
    restored = current_app.GroupResult.restore(result.id)
    return [
        [r.id for r in restored.results] == [r.id for r in result.results],
        get(restored),
    ]


@case
def groupresult_counts(t: Twins) -> Any:
    result = group(t.add.si(n=1, y=1), t.fail.si(v="x"), ct.add.si(2, 2)).apply_async()
    value = get(result, propagate=False)
    return [
        value,
        result.completed_count(),
        result.successful(),
        result.failed(),
        result.ready(),
        result.waiting(),
        len(result.children),
        [r.state for r in result.children],
    ]


# -- chords (test_chord_in_chain_with_args, test_chain_chord_chain, test_nested_chord, ...) --


@case
def chord_of_stand_ins(t: Twins) -> Any:
    return get(chord([t.add.s(n=1, y=1), t.add.s(n=2, y=2)], ct.identity.s()).apply_async())


@case
def chord_stand_in_body(t: Twins) -> Any:
    return get(chord([ct.add.s(1, 1), ct.add.s(2, 2)], t.echo.s()).apply_async())


@case
def chord_chain_body(t: Twins) -> Any:
    body = chain(t.echo.s(), ct.pick.s(key="v"))
    return get(chord([ct.add.si(1, 1), t.add.si(n=2, y=0)], body).apply_async())


@case
def chord_in_a_chain_with_args(t: Twins) -> Any:
    joined = chord([t.add.s(y=1), ct.add.s(2)], ct.identity.s())
    return get(chain(ct.identity.si(1), joined, ct.identity.s()).apply_async())


@case
def chord_then_a_stand_in(t: Twins) -> Any:
    joined = chord([t.add.si(n=1, y=1), ct.add.si(1, 2)], ct.identity.s())
    return get(chain(joined, t.echo.s()).apply_async())


@case
def group_then_a_stand_in(t: Twins) -> Any:
    return get(chain(group(t.add.si(n=1, y=0), t.add.si(n=2, y=0)), t.echo.s()).apply_async())


@case
def chord_group_header_plain_only(t: Twins) -> Any:
    header = group(chain(ct.identity.s(42), group(ct.identity.s(), ct.identity.s())))
    return get(chord(header, ct.identity.s()).delay())


@case
def chord_group_header(t: Twins) -> Any:
    header = group(chain(ct.identity.s(42), group(t.echo.s(), ct.identity.s())))
    return get(chord(header, ct.identity.s()).delay())


@case
def chord_nested(t: Twins) -> Any:
    inner = chord([ct.add.si(1, 1), t.add.si(n=2, y=2)], ct.identity.s())
    return get(chord([inner, ct.add.si(5, 5)], t.echo.s()).apply_async())


# -- links, errbacks and errors (test_chain_on_error, test_chord_on_error, ...) -------------


@case
def link(t: Twins) -> Any:
    key = _key()
    value = get(t.add.s(n=1, y=1).apply_async(link=ct.record.s(key=key)))
    return [value, recorded(key, 1)]


@case
def link_error(t: Twins) -> Any:
    key = _key()
    result = t.fail.s(v="x").apply_async(link_error=ct.record_id.s(key=key))
    return [get(result), recorded(key, 1) == [result.id]]


@case
def link_error_new_form(t: Twins) -> Any:
    key = _key()
    result = t.fail.s(v="x").apply_async(link_error=ct.record_request.s(key=key))
    return [get(result), recorded(key, 1) == [result.id]]


@case
def error_in_a_chain(t: Twins) -> Any:
    result = chain(t.add.s(n=1, y=1), t.fail.s(), ct.identity.s()).apply_async()
    value = get(result)
    nodes = [result.parent.parent, result.parent, result]
    return [value, [n.state for n in nodes], get(result.parent.parent)]


@case
def on_error_in_a_chain(t: Twins) -> Any:
    key = _key()
    failing = t.fail.s().on_error(ct.record_id.s(key=key))
    result = chain(ct.identity.s(1), failing, ct.identity.s()).apply_async()
    return [get(result), recorded(key, 1) == [result.parent.id], result.parent.state]


@case
def error_in_a_chain_with_countdown(t: Twins) -> Any:
    key = _key()
    canvas = chain(ct.identity.s(1), t.fail.s().set(countdown=1), ct.identity.s())
    result = canvas.on_error(ct.record_id.s(key=key)).apply_async()
    return [get(result), len(recorded(key, 1))]


@case
def error_in_a_group(t: Twins) -> Any:
    return get(group(t.add.si(n=1, y=1), t.fail.si(v="x"), ct.add.si(1, 1)).apply_async())


@case
def error_in_a_chord_header(t: Twins) -> Any:
    key = _key()
    body = ct.identity.s().on_error(ct.record_id.s(key=key))
    result = chord([ct.add.si(1, 1), t.fail.si(v="x")], body).apply_async()
    return [get(result), recorded(key, 1) == [result.id]]


@case
def error_in_a_chord_body(t: Twins) -> Any:
    return get(chord([ct.add.si(1, 1), t.add.si(n=1, y=1)], t.fail.s()).apply_async())


# -- more of Celery's shapes: task ids, the | operator, links inside a chain ----------------


@case
def custom_task_id(t: Twins) -> Any:
    task_id = uuid.uuid4().hex
    result = t.add.s(n=2, y=3).apply_async(task_id=task_id)
    return [result.id == task_id, get(current_app.AsyncResult(task_id))]


@case
def pipe_operator(t: Twins) -> Any:
    return get((ct.identity.s(2) | t.add.s(y=5) | ct.pick.s()).apply_async())


@case
def link_on_a_chain(t: Twins) -> Any:
    key = _key()
    result = chain(ct.identity.s(1), t.add.s(y=1)).apply_async(link=ct.record.s(key=key))
    return [get(result), recorded(key, 1)]


@case
def a_stand_ins_own_link_in_a_chain(t: Twins) -> Any:
    key = _key()
    linked = t.add.s(y=1)
    linked.link(ct.record.s(key=key))
    return [get(chain(ct.identity.s(1), linked, ct.pick.s()).apply_async()), recorded(key, 1)]


@case
def chord_partial_args(t: Twins) -> Any:
    joined = chord([t.add.s(y=1), ct.add.s(1), t.echo.s()], ct.identity.s())
    return get(joined.apply_async(args=(2,)))


@case
def chord_of_one(t: Twins) -> Any:
    return get(chord([t.add.si(n=4, y=4)], ct.identity.s()).apply_async())


@case
def chain_group_into_group(t: Twins) -> Any:
    first = group(t.add.si(n=1, y=1), ct.identity.si(3))
    return get(chain(first, group(t.echo.s(), ct.identity.s())).apply_async())


def run_all(twins: Twins, names: list[str] | None = None) -> dict[str, Any]:
    """Every case (or those named) on the current app, as JSON values."""
    out: dict[str, Any] = {}
    for name in names or list(CASES):
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


if __name__ == "__main__":
    main()
