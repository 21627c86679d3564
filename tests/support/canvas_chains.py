"""Cases of the differential canvas suite (tests/support/canvas_cases.py): chains, partial
arguments, groups and the GroupResult API, after Celery's t/integration/test_canvas.py."""

from __future__ import annotations

import time
from typing import Any

from celery import chain, current_app, group

from tests.support import canvastasks as ct
from tests.support.canvas_cases import Twins, case, get

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
