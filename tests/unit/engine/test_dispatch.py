"""What the dispatcher puts on a step's message: the run's priority and the node's deadline
(every step carries them; there is no control task to forget them on)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.exceptions import BatchPublishError
from kombu.transport.redis import PublishBatch

from fleet.config import FleetConfig
from fleet.engine.dispatch import Dispatcher
from fleet.engine.readiness import StepCall
from fleet.sdk.registry import registry
from fleet.store.runs import RunStore
from tests.support.queues import queued_steps


class Recorder:
    """Stands in for the Celery app's send_task (a stub broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        # (no broker URL: steps are never sent by the record's round trip, past the stub)
        self.conf = SimpleNamespace(task_send_sent_event=True, broker_url=None)

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[Recorder]:
        yield self

    def batch(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def _call(timeout: float | None, path: str = "a") -> StepCall:
    return {
        "path": path,
        "op": "text.upper",
        "kind": "compute",
        "args": {"text": "x"},
        "classes": ["cpu"],
        "retries": 0,
        "timeout": timeout,
        "remaining": 1,
        "group": None,
    }


def test_priority_and_deadline_travel_with_every_step(cfg: FleetConfig) -> None:
    app = Recorder()
    store = RunStore("redis://127.0.0.1:1/0")  # never reached: send() talks to the broker only
    dispatcher = Dispatcher(app, cfg, store, registry)  # type: ignore[arg-type]
    dispatcher.send(_call(3.0), {"id": "r", "priority": 7})
    dispatcher.send(_call(None), {"id": "r", "workflow": "triage"})
    (name, first), (_, second) = app.sent
    assert name == "fleet.step"
    # the run's priority as the broker reads it (cfg: Redis, which serves 0 first: 9 - 7)
    assert first["priority"] == cfg.message_priority(7) == 2 and first["soft_time_limit"] == 3.0
    assert first["time_limit"] == 8.0 and first["kwargs"]["call"]["path"] == "a"
    assert first["shadow"] == "?:a [text.upper]"  # Flower shows workflow:node [op]
    assert second["priority"] == 9 and "soft_time_limit" not in second  # none: the lowest
    assert second["shadow"] == "triage:a [text.upper]"


def test_a_step_claims_what_it_alone_makes_ready_as_it_records(
    cfg: FleetConfig, redis_url: str
) -> None:
    """In a chain, a step's successor is claimed in the round trip that records the step:
    advance then sends it with no claim of its own. A join (two parents) and the first step
    of a loop's next iteration are still claimed apart; a claim held by another owner keeps
    the step from being sent twice."""
    import uuid

    from fleet import Workflow
    from fleet.constants import INPUTS
    from fleet.engine.compiler import compile_workflow, only_after
    from fleet.store.records import Claim, TraceEntry

    registry.load(cfg.op_modules, cfg.op_plugins)
    wf = Workflow("chain", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    c = wf.step("c", "text.upper", text=a["text"])
    d = wf.step("d", "text.upper", text=b["text"], when=c["text"] == "X")  # a join
    wf.output("t", d["text"])
    compiled = compile_workflow(wf.spec(), cfg, registry)
    assert only_after(compiled, "a") == ["b", "c"] and only_after(compiled, "b") == []
    assert only_after(compiled, "d") == [] and only_after(compiled, "m[3]") == []

    store = RunStore(redis_url)
    app = Recorder()
    dispatcher = Dispatcher(app, cfg, store, registry)  # type: ignore[arg-type]
    dispatcher.register(compiled)
    run_id = uuid.uuid4().hex
    run = {"id": run_id, "workflow": "chain", "spec": compiled.digest}
    store.create(run_id, "chain", inputs={"t": "x"}, spec=compiled.digest)
    store.claim(run_id, "someone-else", ["c"])  # c is sent by another owner already
    claimed: list[list[str]] = []
    real = store.claim
    store.claim = lambda r, o, p: claimed.append(p) or real(r, o, p)  # type: ignore[method-assign]
    claim = Claim("task-a", only_after(compiled, "a"))
    entry = TraceEntry("a", "text.upper", "compute", "cpu", None, None, "succeeded", None, 0, 1)
    status, state = store.record_step(run_id, "a", {"text": "X"}, entry, claim=claim)
    assert claim.won == ["b"] and status == "running" and state is not None
    dispatcher.advance(run, state, owner="task-a", claimed=claim)
    assert [o["kwargs"]["call"]["path"] for _, o in app.sent] == ["b"]  # c: the other's
    assert claimed == [[]]  # nothing left to claim apart: no round trip
    assert INPUTS in state


def test_a_submission_claims_its_first_steps_as_it_records_the_run(
    cfg: FleetConfig, redis_url: str
) -> None:
    """The run record and the claims of its first steps go in one round trip; a submission
    tried again (a broker error) gets its claims back and sends its first steps again."""
    import uuid

    from fleet import Workflow
    from fleet.engine.compiler import compile_workflow
    from fleet.engine.dispatch import new_run

    registry.load(cfg.op_modules, cfg.op_plugins)
    wf = Workflow("pair", inputs=["t"])
    wf.output("a", wf.step("a", "text.upper", text=wf.input("t"))["text"])
    wf.output("b", wf.step("b", "text.normalize", text=wf.input("t"))["text"])
    compiled = compile_workflow(wf.spec(), cfg, registry)
    store = RunStore(redis_url)
    app = Recorder()
    dispatcher = Dispatcher(app, cfg, store, registry)  # type: ignore[arg-type]
    claimed: list[list[str]] = []
    real = store.claim
    store.claim = lambda r, o, p: claimed.append(p) or real(r, o, p)  # type: ignore[method-assign]
    run = new_run(compiled, uuid.uuid4().hex, {})
    dispatcher.start(compiled, run, {"t": "x"})
    dispatcher.start(compiled, run, {"t": "x"}, force=True)  # tried again: the same run id
    assert sorted(o["kwargs"]["call"]["path"] for _, o in app.sent) == ["a", "a", "b", "b"]
    assert claimed == [[], []]  # no claim round trip of their own


@pytest.mark.parametrize("broken", [False, True], ids=["together", "batch lost"])
def test_steps_made_ready_together_go_to_the_broker_in_one_round_trip(
    cfg: FleetConfig, redis_url: str, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    """send_all: three steps and their task-sent events in one pipeline; a batch the broker
    may not have taken (the connection lost as it flushed) is sent again a step at a time."""
    import uuid

    from fleet.messaging.app import app as fleet_app
    from fleet.messaging.app import create_app

    flushes: list[int] = []
    real_flush = PublishBatch.flush

    def flush(batch: PublishBatch) -> None:
        flushes.append(batch._buffered)
        if broken:
            batch.pipeline.reset()  # nothing reached Redis
            raise BatchPublishError("Redis publish batch failed; delivery is uncertain")
        real_flush(batch)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(PublishBatch, "flush", flush)
    broker = redis_url.rsplit("/", 1)[0] + "/7"  # a database no test fleet's worker reads
    app = create_app(cfg.model_copy(update={"broker_url": broker, "task_events": True}))
    fleet_app.set_current()  # create_app made its app the current one
    dispatcher = Dispatcher(app, cfg, RunStore(redis_url), registry)
    run_id = uuid.uuid4().hex
    dispatcher.send_all([_call(None, p) for p in ("a", "b", "c")], {"id": run_id})
    assert flushes == [6]  # 3 messages and 3 task-sent events: one round trip
    assert queued_steps(broker, run_id, cfg.classes["cpu"].queue_name) == ["a", "b", "c"]


def test_a_step_tells_its_worker_what_its_start_lease_needs(cfg: FleetConfig) -> None:
    """Each step's message says what its worker needs to take the step's start lease as it
    receives it (workers/receipt.py): the run, the node, a map item or not, and whether the
    step reads the run's state as it begins -- one the run may end with does."""
    from fleet import Workflow
    from fleet.constants import BEGIN_HEADER
    from fleet.engine.compiler import compile_workflow

    wf = Workflow("two", inputs=["t"])
    first = wf.step("a", "text.upper", text=wf.input("t"))
    wf.output("out", wf.step("b", "text.upper", text=first["text"])["text"])
    compiled = compile_workflow(wf.spec(), cfg, registry)
    app = Recorder()
    dispatcher = Dispatcher(app, cfg, RunStore("redis://127.0.0.1:1/0"), registry)  # type: ignore[arg-type]
    dispatcher._remember(compiled.digest, compiled)
    run = {"id": "r", "spec": compiled.digest}
    dispatcher.send(_call(None, "a"), run)
    dispatcher.send(_call(None, "b"), run)
    dispatcher.send({**_call(None, "b"), "group": "m"}, run)  # a map's item
    headers = [options["headers"][BEGIN_HEADER] for _, options in app.sent]
    assert headers == [["r", "a", 0, 0], ["r", "b", 0, 1], ["r", "b", 1, 0]]
