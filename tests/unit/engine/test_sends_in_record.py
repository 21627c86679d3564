"""A step whose readers all read it alone sends them in the round trip that records it: the
fleet's broker transport builds their messages without publishing them, and the record's
claim script publishes each one it wins while the run is running. On a real Redis that is
both the broker and the run store, with the fleet's Celery app."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import INPUTS
from fleet.engine.compiler import CompiledWorkflow, compile_workflow, only_after, sends_alone
from fleet.engine.dispatch import Dispatcher, new_run
from fleet.sdk.registry import registry
from fleet.store.records import Claim, TraceEntry
from fleet.store.runs import RunStore
from tests.support.queues import message_body, queued_messages, queued_steps


@pytest.fixture()
def broker(redis_url: str, cfg: FleetConfig) -> Iterator[tuple[Dispatcher, FleetConfig]]:
    """A dispatcher whose broker is its run store's Redis (a database no test fleet reads)."""
    from fleet.messaging.app import app as fleet_app
    from fleet.messaging.app import create_app

    url = redis_url.rsplit("/", 1)[0] + "/8"
    redis.Redis.from_url(url).flushdb()
    cfg = cfg.model_copy(update={"broker_url": url, "task_events": True})
    app = create_app(cfg)
    fleet_app.set_current()  # create_app made its app the current one
    yield Dispatcher(app, cfg, RunStore(url, 600), registry), cfg


def _compiled(cfg: FleetConfig, wf: Workflow) -> CompiledWorkflow:
    return compile_workflow(Fleet(None, cfg).validate(wf), cfg, registry)  # type: ignore[arg-type]


def _chain(cfg: FleetConfig) -> CompiledWorkflow:
    wf = Workflow("chain", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"), classes=["cpu"])
    b = wf.step("b", "text.upper", text=a["text"], classes=["cpu"])
    wf.output("n", wf.step("c", "text.stats", text=b["text"], classes=["cpu"])["words"])
    return _compiled(cfg, wf)


def _entry(path: str) -> TraceEntry:
    now = time.time()
    return TraceEntry(path, "text.upper", "compute", "cpu", "cpu", "w", "succeeded", None, now, now)


def _started(dispatcher: Dispatcher, compiled: CompiledWorkflow) -> dict[str, Any]:
    run = new_run(compiled, uuid.uuid4().hex, {})
    dispatcher.start(compiled, run, {"t": "one two"})  # records it and sends a
    return run


def test_the_record_sends_the_successor_it_claims(broker: tuple[Dispatcher, FleetConfig]) -> None:
    dispatcher, cfg = broker
    compiled = _chain(cfg)
    run = _started(dispatcher, compiled)
    assert queued_steps(cfg.broker_url, run["id"]) == ["a"]
    events = redis.Redis.from_url(cfg.broker_url).pubsub()
    events.psubscribe("*task.sent")
    events.get_message(timeout=1)  # (the subscription's own reply)
    state = {INPUTS: {"t": "one two"}, "a": {"text": "ONE TWO"}}
    prepared = dispatcher.prepare_sends(run, state, only_after(compiled, "a"))
    assert prepared is not None and len(prepared.commands) == 1
    # b's message on its queue: kombu's own command, not yet run; its task-sent event held
    assert [name for name, _ in prepared.commands[0]] == ["lpush"]
    assert [kind for kind, _, _ in prepared.events[0]] == ["task-sent"]
    assert queued_steps(cfg.broker_url, run["id"]) == ["a"]
    assert events.get_message(timeout=0.2) is None
    claim = Claim("task-a", ["b"], sends=prepared.commands)
    status, state_read = dispatcher.store.record_step(
        run["id"], "a", {"text": "ONE TWO"}, _entry("a"), claim=claim
    )
    assert (status, state_read, claim.won) == ("running", None, ["b"])
    assert queued_steps(cfg.broker_url, run["id"]) == ["a", "b"]
    body = message_body(json.loads(prepared.commands[0][0][1][1]))
    assert body[1]["call"]["args"] == {"text": "ONE TWO"}  # b reads a's outputs
    dispatcher.sent(claim, prepared)  # then its event, as Celery publishes one after its message
    event = events.get_message(timeout=2)
    assert event is not None
    sent = message_body(json.loads(event["data"]))
    assert sent["type"] == "task-sent" and sent["uuid"] == body_id(prepared)
    assert sent["queue"] == cfg.classes["cpu"].queue_name


def body_id(prepared: Any) -> str:
    """The task id of the first prepared message."""
    return str(json.loads(prepared.commands[0][0][1][1])["headers"]["id"])


def _commands(dispatcher: Dispatcher, run: dict[str, Any], state: Any) -> Any:
    prepared = dispatcher.prepare_sends(run, state, ["b"])
    assert prepared is not None
    return prepared.commands


def test_nothing_is_sent_for_a_run_that_failed_or_a_claim_another_holds(
    broker: tuple[Dispatcher, FleetConfig],
) -> None:
    dispatcher, cfg = broker
    compiled = _chain(cfg)
    store = dispatcher.store
    state = {INPUTS: {"t": "x"}, "a": {"text": "X"}}
    failed = _started(dispatcher, compiled)
    store.fail(failed["id"], "other", "another branch failed")
    claim = Claim("task-a", ["b"], sends=_commands(dispatcher, failed, state))
    status, _ = store.record_step(failed["id"], "a", {"text": "X"}, _entry("a"), claim=claim)
    assert status == "failed" and queued_steps(cfg.broker_url, failed["id"]) == ["a"]
    taken = _started(dispatcher, compiled)
    assert store.claim(taken["id"], "another-copy", ["b"]) == ["b"]
    claim = Claim("task-a", ["b"], sends=_commands(dispatcher, taken, state))
    status, _ = store.record_step(taken["id"], "a", {"text": "X"}, _entry("a"), claim=claim)
    assert (status, claim.won) == ("running", [])
    assert queued_steps(cfg.broker_url, taken["id"]) == ["a"]
    # the same task again (its message redelivered): its claim is its own, b is sent again
    claim = Claim("another-copy", ["b"], sends=_commands(dispatcher, taken, state))
    store.record_step(taken["id"], "a", {"text": "X"}, _entry("a"), claim=claim)
    assert claim.won == ["b"] and queued_steps(cfg.broker_url, taken["id"]) == ["a", "b"]


def test_only_a_step_whose_readers_read_it_alone_sends_in_its_record(cfg: FleetConfig) -> None:
    chain = _chain(cfg)
    assert [sends_alone(chain, p) for p in ("a", "b", "c")] == [True, True, False]  # c: last
    wf = Workflow("join", inputs=["t"])
    x = wf.step("x", "text.upper", text=wf.input("t"))
    y = wf.step("y", "text.upper", text=x["text"])
    z = wf.step("z", "text.template", template="${p}${q}", p=x["text"], q=y["text"])
    wf.output("out", wf.step("w", "text.upper", text=z["text"])["text"])
    join = _compiled(cfg, wf)
    # z reads x and y: whichever records last makes it ready, from the state read back after
    # the record, as always; z's only reader w reads it alone
    assert [sends_alone(join, p) for p in ("x", "y", "z", "w")] == [False, False, True, False]


def test_steps_are_sent_as_always_where_the_record_cannot_send_them(
    broker: tuple[Dispatcher, FleetConfig], redis_url: str
) -> None:
    dispatcher, cfg = broker
    compiled = _chain(cfg)
    run = _started(dispatcher, compiled)
    state = {INPUTS: {"t": "x"}, "a": {"text": "X"}}
    assert dispatcher.prepare_sends(run, state, ["b"]) is not None
    assert dispatcher.prepare_sends(run, {INPUTS: {"t": "x"}}, ["b"]) is None  # b not ready
    # a run store on another Redis database than the broker's: no script can reach the queue
    other = cfg.model_copy(update={"result_backend": redis_url.rsplit("/", 1)[0] + "/9"})
    elsewhere = Dispatcher(dispatcher.app, other, dispatcher.store, registry)
    assert not elsewhere.sends_in_record
    assert elsewhere.prepare_sends(run, state, ["b"]) is None
    wf = Workflow("waits", inputs=["t"])
    a = wf.step("a", "text.stats", text=wf.input("t"), classes=["cpu"])
    wf.output("at", wf.step("w", "wait.for", seconds=a["words"])["at"])
    waits = _compiled(cfg, wf)
    parked = _started(dispatcher, waits)
    assert not sends_alone(waits, "a")  # its reader parks: sent as always
    counted = {INPUTS: {"t": "x"}, "a": {"words": 1}}
    assert dispatcher.prepare_sends(parked, counted, ["w"]) is None  # a wait parks: no message


def test_a_submission_sends_its_first_steps_in_the_round_trip_that_records_it(
    broker: tuple[Dispatcher, FleetConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.transport.redis import PublishBatch

    dispatcher, cfg = broker
    flushed: list[int] = []
    real = PublishBatch.flush
    monkeypatch.setattr(PublishBatch, "flush", lambda b: flushed.append(1) or real(b))
    compiled = _chain(cfg)
    events = redis.Redis.from_url(cfg.broker_url).pubsub()
    events.psubscribe("*task.sent")
    events.get_message(timeout=1)  # (the subscription's own reply)
    runs = [new_run(compiled, uuid.uuid4().hex, {}) for _ in range(3)]
    dispatcher.start_runs(compiled, [(run, {"t": "x"}, None) for run in runs])
    told = [events.get_message(timeout=2) for _ in runs]
    assert all(m is not None and m["type"] == "pmessage" for m in told)
    # no publish batch of its own: the runs' record sent them, task-sent events included
    assert flushed == []
    assert [queued_steps(cfg.broker_url, run["id"]) for run in runs] == [["a"]] * 3
    assert all(dispatcher.store.status(run["id"]) == "running" for run in runs)


def test_a_channel_that_publishes_at_once_is_not_asked_to_hold_a_message(
    broker: tuple[Dispatcher, FleetConfig],
) -> None:
    """kombu does not batch on a channel whose commands retry themselves: it publishes at
    once, so nothing may be built there to be sent by a record later."""
    from fleet.messaging.app import app as fleet_app
    from fleet.messaging.app import create_app

    dispatcher, cfg = broker
    compiled = _chain(cfg)
    run = _started(dispatcher, compiled)
    app = create_app(cfg)
    app.conf.broker_transport_options = {"retry_on_timeout": True}
    fleet_app.set_current()
    retrying = Dispatcher(app, cfg, dispatcher.store, registry)
    state = {INPUTS: {"t": "x"}, "a": {"text": "X"}}
    assert retrying.prepare_sends(run, state, ["b"]) is None
    assert queued_steps(cfg.broker_url, run["id"]) == ["a"]  # b was not published meanwhile


def test_a_submission_the_router_cannot_place_fails_once_it_is_recorded(
    redis_url: str, cfg: FleetConfig
) -> None:
    """With ``no_worker = "fail"`` and no live worker, the router fails the run: not while
    its first step is built to go with the record (the run does not exist yet), but as it
    is sent after it -- the run ends failed, its reply settled, nothing left behind."""
    from fleet.messaging.app import app as fleet_app
    from fleet.messaging.app import create_app

    url = redis_url.rsplit("/", 1)[0] + "/8"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    cfg = cfg.model_copy(update={"broker_url": url, "no_worker": "fail"})
    app = create_app(cfg)
    fleet_app.set_current()
    dispatcher = Dispatcher(app, cfg, RunStore(url, 600), registry)
    compiled = _chain(cfg)
    run = new_run(compiled, uuid.uuid4().hex, {})
    dispatcher.start(compiled, run, {"t": "x"}, reply={"id": "celery-task-1"})
    info = dispatcher.store.info(run["id"])
    assert info is not None and info.status == "failed" and info.error_node == "a"
    assert info.finished_at is not None and info.finished_at >= (info.submitted_at or 0)
    assert not client.exists(f"fleet:run:{run['id']}:replies")  # settled, not left owed
    assert run["id"] not in client.zrange("fleet:runs:active", 0, -1)


def test_a_chain_step_run_by_its_task_sends_the_next_with_its_record(
    broker: tuple[Dispatcher, FleetConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fleet.step`` itself (run in this process): the state comes with its lease, the
    successor goes with its record and is not sent again by ``advance``."""
    from fleet.messaging.app import app as fleet_app
    from fleet.store.leases import Leases
    from workers import tasks
    from workers.runtime import WorkerRuntime

    dispatcher, cfg = broker
    rt = WorkerRuntime(fleet_app)
    rt.cfg, rt.engine = cfg, dispatcher
    rt.leases = Leases(dispatcher.store.redis, cfg.run_ttl, cfg.start_lease_s)
    monkeypatch.setattr(tasks, "runtime", lambda _app: rt)
    advanced: list[str] = []
    real = dispatcher.advance
    monkeypatch.setattr(
        dispatcher, "advance", lambda run, *a, **k: advanced.append(run["id"]) or real(run, *a, **k)
    )
    compiled = _chain(cfg)
    run = _started(dispatcher, compiled)
    call = compile_call(dispatcher, run, "a")
    tasks.step.apply(kwargs={"call": call, "run": run}, task_id=uuid.uuid4().hex)
    assert queued_steps(cfg.broker_url, run["id"]) == ["a", "b"]
    assert dispatcher.store.state(run["id"])["a"] == {"text": "ONE TWO"}
    assert advanced == []  # nothing left to send after the record


def compile_call(dispatcher: Dispatcher, run: dict[str, Any], path: str) -> Any:
    """The step call of ``path`` as its message carries it (from the queue)."""
    for message in queued_messages(dispatcher.cfg.broker_url, "cpu"):
        if message["run"]["id"] == run["id"] and message["call"]["path"] == path:
            return message["call"]
    raise AssertionError(f"no message of {path}")
