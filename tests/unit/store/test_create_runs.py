"""Runs recorded together (``RunStore.create_runs``, what ``Fleet.submit_many`` writes), on a
real Redis: one round trip for them all, each run's claims filled in, and a submission tried
again after a broker error leaves a run that went on as it is."""

from __future__ import annotations

import uuid

import pytest
from redis.client import Pipeline

from fleet.constants import INPUTS
from fleet.store.records import Claim, NewRun
from fleet.store.runs import RunStore


def test_runs_are_recorded_with_their_claims_in_one_round_trip(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RunStore(redis_url, 600)
    ids = [uuid.uuid4().hex for _ in range(5)]
    claims = [Claim(f"submit:{i}", ["a", "b"] if n % 2 else []) for n, i in enumerate(ids)]
    runs = [NewRun(i, "many", {}, {"n": n}, spec="d", claim=c) for n, (i, c) in
            enumerate(zip(ids, claims, strict=True))]  # fmt: skip
    executed: list[int] = []
    real = Pipeline.execute
    monkeypatch.setattr(
        Pipeline, "execute", lambda p, *a, **k: executed.append(1) or real(p, *a, **k)
    )
    store.create_runs(runs)
    assert executed == [1]
    assert [c.won for c in claims] == [[], ["a", "b"], [], ["a", "b"], []]
    for n, run_id in enumerate(ids):
        info = store.info(run_id)
        assert info is not None and info.status == "running" and info.workflow == "many"
        assert store.state(run_id)[INPUTS] == {"n": n}


def test_recording_again_leaves_a_run_that_went_on_as_it_is(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    run_id = uuid.uuid4().hex
    store.create(run_id, "again", {}, {"t": "x"}, spec="d")
    store.succeed(run_id, {"out": "X"})
    store.create(run_id, "again", {}, {"t": "x"}, spec="d")  # the same submission, tried again
    info = store.info(run_id)
    assert info is not None and info.status == "succeeded" and info.outputs == {"out": "X"}
