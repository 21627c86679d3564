"""A step that completes its run ends it in the round trip that records it
(``RunStore.record_step(ending=...)``), on a real Redis: the first ending still wins, and
the replies the run owes are settled as ``succeed`` settles them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fleet.store.events import EVENT_FIELD, events_key
from fleet.store.records import Ending, TraceEntry
from fleet.store.runs import STATE_AFTER_END_S, RunStore


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
