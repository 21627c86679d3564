"""The stores' Lua scripts go by digest (fleet/store/lua.py), on a real Redis: every store
connection loads them as it connects, and a script Redis lost while a connection stayed
open (SCRIPT FLUSH) is loaded and run again -- in a pipeline, in the order it was queued."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from redis.exceptions import NoScriptError

from fleet.store.connection import connect
from fleet.store.events import NOTIFY
from fleet.store.leases import BEGIN_SCRIPT
from fleet.store.lua import KNOWN, Lua
from fleet.store.records import Ending, TraceEntry
from fleet.store.runs import RunStore
from fleet.store.scripts import END_SCRIPT


def _entry(path: str) -> TraceEntry:
    now = time.time()
    return TraceEntry(path, "text.upper", "tool", "cpu", "cpu", "w", "succeeded", None, now, now)


def test_a_store_connection_loads_every_script_as_it_connects(redis_url: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    plain.script_flush()
    assert not any(plain.script_exists(*KNOWN))
    client = connect(redis_url)
    client.ping()  # (its first connection)
    assert all(plain.script_exists(*KNOWN))
    assert {END_SCRIPT.sha, BEGIN_SCRIPT.sha, NOTIFY.sha} <= set(KNOWN)


def test_a_script_lost_in_a_pipeline_runs_again_in_its_place(redis_url: str) -> None:
    """The pipeline runs again from the lost script on: the reads after a step's record
    read it (the run's state holds the step; a run it ended has ended)."""
    store = RunStore(redis_url, 600)
    ending, going = uuid.uuid4().hex, uuid.uuid4().hex
    for run_id in (ending, going):
        store.create(run_id, "one", {}, {"t": "x"}, spec="digest")  # (the store connects)
    plain = redis.Redis.from_url(redis_url)
    plain.script_flush()
    ends = Ending("succeeded", outputs={"out": "X"})
    # the record's pipeline: the record's and the end's script, then a read of the status
    status, _ = store.record_step(ending, "a", {"text": "X"}, _entry("a"), ending=ends)
    assert status == "succeeded"
    info = store.info(ending)
    assert info is not None and (info.status, info.outputs) == ("succeeded", {"out": "X"})
    assert [e.node for e in store.trace(ending)] == ["a"]
    plain.script_flush()
    status, state = store.record_step(going, "a", {"text": "X"}, _entry("a"))
    assert status == "running" and state is not None and state["a"] == {"text": "X"}
    assert [e.node for e in store.trace(going)] == ["a"]  # (its record ran once)


def test_a_transaction_is_not_run_in_two(redis_url: str) -> None:
    client = connect(redis_url, decode_responses=True)
    key = f"lua-test-{uuid.uuid4().hex}"
    script = Lua("return redis.call('INCR', KEYS[1])")
    client.ping()
    redis.Redis.from_url(redis_url).script_flush()
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    script.queue(pipe, [key], [])
    with pytest.raises(NoScriptError):
        pipe.execute()
    assert client.get(key) == "1"  # what ran before it, once
    pipe = client.pipeline(transaction=True)
    script.queue(pipe, [key], [])
    assert pipe.execute() == [2]  # loaded: the next try runs


def test_a_script_lost_between_calls_is_loaded_again(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    run_id = uuid.uuid4().hex
    store.create(run_id, "one", {}, {"t": "x"}, spec="digest")
    redis.Redis.from_url(redis_url).script_flush()
    assert store.claim(run_id, "owner", ["a", "b"]) == ["a", "b"]
    assert store.claim(run_id, "other", ["a"]) == []


def test_a_pipelines_other_errors_are_raised_as_before(redis_url: str) -> None:
    client = connect(redis_url, decode_responses=True)
    key = f"lua-test-{uuid.uuid4().hex}"
    client.set(key, "a string")
    script = Lua("return redis.call('HGET', KEYS[1], 'f')")
    pipe = client.pipeline(transaction=False)
    script.queue(pipe, [key], [])
    pipe.get(key)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pipe.execute()
    pipe = client.pipeline(transaction=False)
    script.queue(pipe, [key], [])
    pipe.get(key)
    failed, value = pipe.execute(raise_on_error=False)
    assert isinstance(failed, redis.ResponseError) and value == "a string"
