"""A step that completes its run ends it in the round trip that records it
(``RunStore.record_step(ending=...)``), on a real Redis: the first ending still wins, and
the replies the run owes are settled as ``succeed`` settles them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from fleet.store.events import EVENT_FIELD, events_key
from fleet.store.lua import Lua
from fleet.store.records import Acknowledgement, Claim, Ending, TraceEntry
from fleet.store.runs import STATE_AFTER_END_S, RunStore
from fleet.store.scripts import (
    END_SCRIPT,
    RECORD_CLAIM_SCRIPT,
    RECORD_END_SCRIPT,
    RECORD_SCRIPT,
)


def _entry(path: str) -> TraceEntry:
    now = time.time()
    return TraceEntry(path, "text.upper", "tool", "cpu", "cpu", "w", "succeeded", None, now, now)


def test_the_run_ends_with_the_record(redis_url: str) -> None:
    settled: list[tuple[str, Ending, dict[str, str]]] = []
    store = RunStore(redis_url, 600, on_end=lambda *a: settled.append(a))
    run_id = uuid.uuid4().hex
    reply: dict[str, Any] = {"task_id": "t1"}
    store.create(run_id, "one", {}, {"t": "x"}, reply=reply, spec="digest")
    ending = Ending("succeeded", outputs={"out": "X"})
    status, state = store.record_step(run_id, "a", {"text": "X"}, _entry("a"), ending=ending)
    assert status == "succeeded"
    assert state is None  # not read: the run has ended
    assert store.state(run_id)["a"] == {"text": "X"}
    info = store.info(run_id)
    assert info is not None and info.status == "succeeded" and info.outputs == {"out": "X"}
    assert store.wait(run_id, timeout=1) is not None  # the done marker a client waits on
    assert [(r, e.status) for r, e, _ in settled] == [(run_id, "succeeded")]


def test_an_earlier_ending_wins(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    run_id = uuid.uuid4().hex
    store.create(run_id, "two", {}, {"t": "x"}, spec="digest")
    store.fail(run_id, "b", "node 'b' failed")
    ending = Ending("succeeded", outputs={"out": "X"})
    status, _ = store.record_step(run_id, "a", {"text": "X"}, _entry("a"), ending=ending)
    assert status == "failed"
    info = store.info(run_id)
    assert info is not None and info.status == "failed" and info.error_node == "b"


def test_the_step_that_ends_a_followed_run_is_told_before_its_end(redis_url: str) -> None:
    store = RunStore(redis_url, 3 * STATE_AFTER_END_S)
    followed, quiet = uuid.uuid4().hex, uuid.uuid4().hex
    store.create(followed, "one", {}, {"t": "x"}, spec="digest", follow=True)
    store.create(quiet, "one", {}, {"t": "x"}, spec="digest")
    for run_id in (followed, quiet):
        ending = Ending("succeeded", outputs={"out": "X"})
        store.record_step(run_id, "a", {"text": "X"}, _entry("a"), ending=ending)
    told = store.redis.xrange(events_key(followed))
    events = [json.loads(fields[EVENT_FIELD]) for _, fields in told]
    assert [(e["event"], e.get("node"), e.get("status")) for e in events] == [
        ("step", "a", "succeeded"),
        ("end", None, "succeeded"),
    ]
    assert events[0]["outputs"] == {"text": "X"}
    assert store.redis.exists(events_key(quiet)) == 0  # nobody followed: nothing written
    assert 0 < store.redis.ttl(events_key(followed)) <= STATE_AFTER_END_S  # as the run's state


def test_a_step_is_recorded_and_told_only_while_its_run_is_followed(redis_url: str) -> None:
    """A step that does not end its run: its outputs and trace entry are written, for the
    store's lifetime, and its step event appended only to a run somebody follows -- in
    the record's one script (RECORD_SCRIPT)."""
    store = RunStore(redis_url, 600)
    followed, quiet = uuid.uuid4().hex, uuid.uuid4().hex
    store.create(followed, "two", {}, {"t": "x"}, spec="digest", follow=True)
    store.create(quiet, "two", {}, {"t": "x"}, spec="digest")
    for run_id in (followed, quiet):
        status, state = store.record_step(run_id, "a", {"text": "X"}, _entry("a"))
        assert status == "running" and state is not None and state["a"] == {"text": "X"}
        assert [(e.node, e.status) for e in store.trace(run_id)] == [("a", "succeeded")]
        for part in ("out", "trace"):
            assert 0 < store.redis.ttl(f"fleet:run:{run_id}:{part}") <= 600
    told = [json.loads(f[EVENT_FIELD]) for _, f in store.redis.xrange(events_key(followed))]
    assert [(e["event"], e["node"], e["outputs"]) for e in told] == [("step", "a", {"text": "X"})]
    assert 0 < store.redis.ttl(events_key(followed)) <= 600
    assert store.redis.exists(events_key(quiet)) == 0  # nobody followed: nothing written


def _unacked(store: RunStore, tag: str) -> Acknowledgement:
    """A message ``tag`` recorded as unacknowledged as kombu records it, and the commands
    that acknowledge it (the worker's: fleet.messaging.transport.ack_commands)."""
    store.redis.zadd("unacked_index", {tag: time.time()})
    store.redis.hset("unacked", tag, "[]")
    return Acknowledgement([("zrem", ("unacked_index", tag)), ("hdel", ("unacked", tag))])


def _still_unacked(store: RunStore, tag: str) -> bool:
    return bool(store.redis.hexists("unacked", tag)) or store.redis.zscore("unacked_index", tag)


def test_a_record_that_leaves_its_step_nothing_to_do_acknowledges_its_message(
    redis_url: str,
) -> None:
    """The step's message is acknowledged in the round trip that records it when nothing
    is left after it: the run ends there, or the steps it made ready go out there."""
    store = RunStore(redis_url, 600)
    ending_run, sending_run = uuid.uuid4().hex, uuid.uuid4().hex
    for run_id in (ending_run, sending_run):
        store.create(run_id, "one", {}, {"t": "x"}, spec="digest")
    ends = _unacked(store, f"tag-{uuid.uuid4().hex}")
    status, state = store.record_step(
        ending_run, "a", {"text": "X"}, _entry("a"), ending=Ending("succeeded", {}), ack=ends
    )
    assert (status, state, ends.done) == ("succeeded", None, True)
    sends = _unacked(store, f"tag-{uuid.uuid4().hex}")
    queue = f"q-{uuid.uuid4().hex}"
    claim = Claim("task-a", ["b"], sends=[[("lpush", (queue, "message of b"))]])
    status, state = store.record_step(
        sending_run, "a", {"text": "X"}, _entry("a"), claim=claim, ack=sends
    )
    assert (status, state, claim.won, sends.done) == ("running", None, ["b"], True)
    assert store.redis.lrange(queue, 0, -1) == ["message of b"]
    assert store.state(sending_run)["a"] == {"text": "X"}
    for ack in (ends, sends):
        tag = ack.commands[0][1][1]
        assert not _still_unacked(store, tag)


def test_a_record_that_leaves_work_after_it_leaves_the_message_unacknowledged(
    redis_url: str,
) -> None:
    """A step whose record reads the run's state (what follows is decided after it) or
    that is a map's item keeps its message unacknowledged through the record: if its
    process dies before the rest, the message comes back and a copy finishes the work."""
    store = RunStore(redis_url, 600)
    run_id = uuid.uuid4().hex
    store.create(run_id, "two", {}, {"t": "x"}, spec="digest")
    reads = _unacked(store, f"tag-{uuid.uuid4().hex}")
    status, state = store.record_step(run_id, "a", {"text": "X"}, _entry("a"), ack=reads)
    assert status == "running" and state is not None and state["a"] == {"text": "X"}
    item = _unacked(store, f"tag-{uuid.uuid4().hex}")
    store.record_step(run_id, "m[0]", {"v": 1}, _entry("m[0]"), group=["m", 2], ack=item)
    for ack in (reads, item):
        assert not ack.done
        assert _still_unacked(store, ack.commands[0][1][1])


def test_a_record_goes_in_one_script_with_the_claims_or_the_end_after_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record, then the claims (or else the run's end) in one script: each sees its
    own keys and arguments, as it did as a script of its own."""
    queued: list[Lua] = []
    real = Lua.queue
    monkeypatch.setattr(Lua, "queue", lambda s, *a: queued.append(s) or real(s, *a))
    store = RunStore(redis_url, 600)
    cases = {
        "end": ([RECORD_END_SCRIPT], None, Ending("succeeded", outputs={"out": "X"})),
        "claim": ([RECORD_CLAIM_SCRIPT], ["b"], None),
        "neither": ([RECORD_SCRIPT], None, None),
        "both": ([RECORD_CLAIM_SCRIPT, END_SCRIPT], ["b"], Ending("succeeded", outputs={})),
    }
    for name, (scripts, paths, ending) in cases.items():
        run_id = uuid.uuid4().hex
        store.create(run_id, name, {}, {"t": "x"}, spec="digest", follow=True)
        queue = f"q-{uuid.uuid4().hex}"
        claim = None if paths is None else Claim("task-a", paths, sends=[[("lpush", (queue, "b"))]])
        queued.clear()
        status, _ = store.record_step(
            run_id, "a", {"text": "X"}, _entry("a"), claim=claim, ending=ending
        )
        assert queued == scripts, name
        assert status == ("succeeded" if ending else "running"), name
        assert store.state(run_id)["a"] == {"text": "X"}, name
        assert [e.node for e in store.trace(run_id)] == ["a"], name
        told = [json.loads(f[EVENT_FIELD]) for _, f in store.redis.xrange(events_key(run_id))]
        want = [("step", "a")] + ([("end", None)] if ending else [])
        assert [(e["event"], e.get("node")) for e in told] == want, name
        if claim is not None:
            assert claim.won == ["b"] and store.redis.lrange(queue, 0, -1) == ["b"], name


def test_a_claim_of_thousands_of_paths_goes_in_a_script_of_its_own(redis_url: str) -> None:
    """Lua copies at most about 8000 arguments at once: a claim longer than that is not
    sent in the record's script (it failed there: "too many results to unpack")."""
    store = RunStore(redis_url, 600)
    run_id = uuid.uuid4().hex
    store.create(run_id, "wide", {}, {"t": "x"}, spec="digest")
    queue = f"q-{uuid.uuid4().hex}"
    paths = [f"b{i}" for i in range(2000)]
    claim = Claim("task-a", paths, sends=[[("lpush", (queue, p))] for p in paths])
    status, _ = store.record_step(run_id, "a", {"text": "X"}, _entry("a"), claim=claim)
    assert status == "running" and claim.won == paths
    assert store.redis.llen(queue) == 2000
    assert store.state(run_id)["a"] == {"text": "X"}
