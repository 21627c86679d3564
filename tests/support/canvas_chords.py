"""Cases of the differential canvas suite (tests/support/canvas_cases.py): chords, links,
errbacks and errors, and more of Celery's shapes, after Celery's t/integration/test_canvas.py."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import chain, chord, current_app, group

from tests.support import canvastasks as ct
from tests.support.canvas_cases import Twins, case, get, new_key, recorded, settled

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
    key = new_key()
    value = get(t.add.s(n=1, y=1).apply_async(link=ct.record.s(key=key)))
    return [value, recorded(key, 1)]


@case
def link_error(t: Twins) -> Any:
    key = new_key()
    result = t.fail.s(v="x").apply_async(link_error=ct.record_id.s(key=key))
    return [get(result), recorded(key, 1) == [result.id]]


@case
def link_error_new_form(t: Twins) -> Any:
    key = new_key()
    result = t.fail.s(v="x").apply_async(link_error=ct.record_request.s(key=key))
    return [get(result), recorded(key, 1) == [result.id]]


@case
def error_in_a_chain(t: Twins) -> Any:
    result = chain(t.add.s(n=1, y=1), t.fail.s(), ct.identity.s()).apply_async()
    value = get(result)
    nodes = [result.parent.parent, result.parent, result]
    return [value, [settled(n) for n in nodes], get(result.parent.parent)]


@case
def on_error_in_a_chain(t: Twins) -> Any:
    key = new_key()
    failing = t.fail.s().on_error(ct.record_id.s(key=key))
    result = chain(ct.identity.s(1), failing, ct.identity.s()).apply_async()
    return [get(result), recorded(key, 1) == [result.parent.id], settled(result.parent)]


@case
def error_in_a_chain_with_countdown(t: Twins) -> Any:
    key = new_key()
    canvas = chain(ct.identity.s(1), t.fail.s().set(countdown=1), ct.identity.s())
    result = canvas.on_error(ct.record_id.s(key=key)).apply_async()
    return [get(result), len(recorded(key, 1))]


@case
def error_in_a_group(t: Twins) -> Any:
    return get(group(t.add.si(n=1, y=1), t.fail.si(v="x"), ct.add.si(1, 1)).apply_async())


@case
def error_in_a_chord_header(t: Twins) -> Any:
    key = new_key()
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
    key = new_key()
    result = chain(ct.identity.s(1), t.add.s(y=1)).apply_async(link=ct.record.s(key=key))
    return [get(result), recorded(key, 1)]


@case
def a_stand_ins_own_link_in_a_chain(t: Twins) -> Any:
    key = new_key()
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


@case
def revoked_before_its_countdown(t: Twins) -> Any:
    result = t.add.s(n=1, y=1).apply_async(countdown=1)
    result.revoke()
    time.sleep(1.5)
    return [get(result), result.state]
