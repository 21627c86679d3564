"""The worker-side task code, run in-process with a stub broker.

Steps run eagerly (``Task.apply``) in this process instead of being published; everything
else is real: the run store is a real Redis server (started here, on its own port), the
task records outputs and trace, decides, claims and "sends" its successors.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.engine.dispatch import Dispatcher
from fleet.engine.readiness import StepCall
from fleet.errors import WorkflowFailed
from fleet.messaging.app import app
from fleet.sdk.registry import registry
from fleet.store.leases import Leases
from fleet.store.runs import RunStore
from workers import tasks
from workers.runtime import WorkerRuntime


class StubBroker(Dispatcher):
    """A dispatcher whose sends land in a list; :meth:`drain` runs them like a worker."""

    sends_in_record = False  # (a step's record would send to the real broker, past the list)

    def __init__(self, cfg: FleetConfig, store: RunStore) -> None:
        super().__init__(app, cfg, store, registry)
        self.sent: list[tuple[str, StepCall, dict[str, Any]]] = []
        self.countdowns: list[float | None] = []  # of each send, in order

    def send(
        self,
        call: StepCall,
        run: dict[str, Any],
        *,
        countdown: float | None = None,
        task_id: str | None = None,
        **_: Any,  # the producer of a batch: nothing is published
    ) -> None:
        self.sent.append((task_id or uuid.uuid4().hex, call, run))
        self.countdowns.append(countdown)

    def drain(self) -> list[str]:
        ran = []
        while self.sent:
            task_id, call, run = self.sent.pop(0)
            ran.append(call["path"])
            tasks.step.apply(kwargs={"call": call, "run": run}, task_id=task_id)
        return ran


@pytest.fixture()
def stub(
    redis_url: str, cfg: FleetConfig, monkeypatch: pytest.MonkeyPatch
) -> tuple[Fleet, StubBroker]:
    cfg = cfg.model_copy(update={"broker_url": redis_url})
    stub = StubBroker(cfg, RunStore(redis_url, 600))
    rt = WorkerRuntime(app)  # this process's runtime, sending through the stub
    rt.cfg, rt.engine = cfg, stub
    rt.leases = Leases(stub.store.redis, cfg.run_ttl, cfg.start_lease_s)
    monkeypatch.setattr(tasks, "runtime", lambda _app: rt)
    client = Fleet(app, cfg)
    client.store, client.dispatcher = stub.store, stub
    return client, stub


def test_each_step_sends_its_successor(stub: tuple[Fleet, StubBroker]) -> None:
    client, broker = stub
    wf = Workflow("seq", inputs=["t"])
    a = wf.step("a", "text.normalize", text=wf.input("t"))
    b = wf.step("b", "text.upper", text=a["text"])
    c = wf.step("c", "text.stats", text=a["text"])
    d = wf.step("d", "text.template", template="${x}/${y}", x=b["text"], y=c["words"])
    wf.output("out", d["text"])
    run = client.submit(wf, {"t": "  one   two "})
    assert [call["path"] for _, call, _ in broker.sent] == ["a"]
    assert broker.drain() == ["a", "b", "c", "d"]  # d sent once, by whichever finished last
    assert run.get(timeout=1) == {"out": "ONE TWO/2"}
    assert [e.node for e in run.trace()] == ["a", "b", "c", "d"]
    claims = client.store.redis.hgetall(f"fleet:run:{run.id}:claims")
    assert sorted(claims) == ["a", "b", "c", "d"]


def test_a_redelivered_step_resends_only_what_it_claimed(stub: tuple[Fleet, StubBroker]) -> None:
    client, broker = stub
    wf = Workflow("two", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"))
    wf.step("b", "text.stats", text=a["text"])
    run = client.submit(wf, {"t": "x"})
    task_id, call, run_info = broker.sent.pop()
    tasks.step.apply(kwargs={"call": call, "run": run_info}, task_id=task_id)
    assert [c["path"] for _, c, _ in broker.sent] == ["b"]
    # The same message again (its worker died before the ack, or the sweeper put it back):
    # a's op does not run again -- it recorded its outputs -- but b is re-sent, at least once.
    tasks.step.apply(kwargs={"call": call, "run": run_info}, task_id=task_id)
    assert [c["path"] for _, c, _ in broker.sent] == ["b", "b"]
    assert [(e.node, e.status) for e in run.trace()] == [("a", "succeeded")]
    # Another task reaching the same state does not send b: it lost the claim.
    tasks.step.apply(kwargs={"call": call, "run": run_info}, task_id="someone-else")
    assert len(broker.sent) == 2
    broker.drain()
    assert run.status() == "succeeded"


def test_copies_of_a_running_step_do_not_run_its_op_beside_it(
    stub: tuple[Fleet, StubBroker],
) -> None:
    """Three copies of one message at once (RabbitMQ delivered such copies together after a
    restart): one runs the op; the others are sent again, under the same task id, for when
    its start lease would lapse -- and then find the step recorded."""
    client, broker = stub
    wf = Workflow("copies", inputs=["t"])
    wf.output("out", wf.step("nap", "test.sleep", seconds=1.0, value=wf.input("t"))["value"])
    run = client.submit(wf, {"t": "x"})
    task_id, call, run_info = broker.sent.pop()
    broker.countdowns.clear()
    copies = [
        threading.Thread(
            target=tasks.step.apply,
            kwargs={"kwargs": {"call": call, "run": run_info}, "task_id": task_id},
        )
        for _ in range(3)
    ]
    for copy in copies:
        copy.start()
    for copy in copies:
        copy.join()
    assert run.get(timeout=1) == {"out": "x"}
    assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]  # once
    assert [sent[0] for sent in broker.sent] == [task_id, task_id]
    lease_s = broker.cfg.start_lease_s
    assert all(c is not None and 0 < c <= lease_s + 0.5 for c in broker.countdowns)
    broker.drain()  # when they come back, the step is recorded: its op does not run again
    assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]


def test_a_failing_step_fails_its_run_and_stops_its_branch(stub: tuple[Fleet, StubBroker]) -> None:
    client, broker = stub
    wf = Workflow("bad", inputs=["t"])
    boom = wf.step("boom", "test.fail", message=wf.input("t"), retries=0)
    wf.step("after", "text.upper", text=boom["value"])
    run = client.submit(wf, {"t": "no good"})
    assert broker.drain() == ["boom"]
    with pytest.raises(WorkflowFailed, match="boom"):
        run.get(timeout=1)
    assert [(e.node, e.status) for e in run.trace()] == [("boom", "failed")]


def test_skipped_nodes_are_traced_once(stub: tuple[Fleet, StubBroker]) -> None:
    client, broker = stub
    wf = Workflow("cond", inputs=["t"])
    found = wf.step("found", "text.contains", text=wf.input("t"), words=["refund"])
    yes = wf.step("yes", "text.upper", text=wf.input("t"), when=found["found"])
    other = wf.step("other", "text.stats", text=wf.input("t"))
    wf.output("out", yes["text"] | other["chars"])
    run = client.submit(wf, {"t": "thanks"})
    broker.drain()
    assert run.get(timeout=1) == {"out": 6}
    assert sorted((e.node, e.status) for e in run.trace()) == [
        ("found", "succeeded"),
        ("other", "succeeded"),
        ("yes", "skipped"),
    ]


def test_run_store_keys_all_expire(stub: tuple[Fleet, StubBroker], redis_url: str) -> None:
    client, broker = stub
    wf = Workflow("one", inputs=["t"])
    wf.output("out", wf.step("u", "text.upper", text=wf.input("t"))["text"])
    run = client.submit(wf, {"t": "x"})
    waiter = threading.Thread(target=run.get, kwargs={"timeout": 10})
    waiter.start()  # blocked in BLPOP when the run ends: it re-arms the wake-up list
    time.sleep(0.3)
    broker.drain()
    waiter.join(10)
    assert run.status() == "succeeded"
    r = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in r.keys(f"fleet:run:{run.id}*")]
    assert len(keys) >= 4 and all(r.ttl(k) > 0 for k in keys)


def test_map_items_read_the_run_state_only_when_the_last_one_ends(
    stub: tuple[Fleet, StubBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, broker = stub
    wf = Workflow("wide", inputs=["texts"])
    ups = wf.step("ups", "text.upper", text=wf.input("texts"), map="text")
    joined = wf.step("joined", "text.join", parts=ups["text"], sep="+")
    wf.output("out", joined["text"])
    reads: list[str] = []
    state = RunStore.state
    monkeypatch.setattr(
        RunStore, "state", lambda self, run_id: reads.append(run_id) or state(self, run_id)
    )
    run = client.submit(wf, {"texts": [f"t{i}" for i in range(20)]})
    assert len(broker.sent) == 20 and all(c["group"] == ["ups", 20] for _, c, _ in broker.sent)
    assert broker.drain()[-1] == "joined"
    assert run.get(timeout=1) == {"out": "+".join(f"T{i}" for i in range(20))}
    assert len(reads) == 1  # by the item that completed the set, not by each of the 20


def test_values_too_large_for_messages_are_refused(stub: tuple[Fleet, StubBroker]) -> None:
    client, broker = stub
    client.cfg = client.cfg.model_copy(update={"max_value_bytes": 10_000})
    wf = Workflow("big", inputs=["t"])
    wf.output("out", wf.step("u", "text.upper", text=wf.input("t"))["text"])
    with pytest.raises(ValueError, match=r"the largest is 't' \(20002 bytes\)"):
        client.submit(wf, {"t": "x" * 20_000})
    assert broker.sent == []  # nothing was sent

    from fleet.sdk.registry import registry as ops
    from workers.tasks import _outputs

    with pytest.raises(ValueError, match="pass large data by reference"):
        _outputs(ops.get("text.upper"), {"text": "x" * 20_000}, limit=10_000)


def test_an_op_knows_the_step_it_runs_for(stub: tuple[Fleet, StubBroker]) -> None:
    """fleet.sdk.current_step(): the run, the node path (its idempotency key) and the
    attempt, set by the worker around the op -- and carried into the deadline's thread."""
    client, broker = stub
    wf = Workflow("ctx", inputs=["v"])
    wf.output("key", wf.step("here", "test.step", value=wf.input("v"), timeout=30)["key"])
    run = client.submit(wf, {"v": 1})
    broker.drain()
    assert run.get(timeout=1) == {"key": f"{run.id}:here"}


def test_only_ops_that_keep_their_deadline_run_without_a_helper_thread() -> None:
    """On a thread pool a step's deadline is kept by a helper thread that abandons the op;
    an op that bounds its own waits (``keeps_deadline``: http.request, llm.chat) runs on the
    pool's thread directly, so a thousand waits are a thousand threads, not two thousand."""
    from fleet.sdk.registry import OpSpec

    seen: list[str] = []

    def where() -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return {"result": 1}

    plain = OpSpec("t.plain", "compute", where, ("cpu",), "cpu", ("result",))
    keeps = OpSpec("t.keeps", "tool", where, ("io",), "io", ("result",), keeps_deadline=True)
    out: list[Any] = []
    pool_thread = threading.Thread(
        target=lambda: out.extend([tasks._run_op(plain, {}, 5.0), tasks._run_op(keeps, {}, 5.0)]),
        name="pool-thread",
    )
    pool_thread.start()
    pool_thread.join()
    assert out == [{"result": 1}, {"result": 1}]
    assert seen == ["fleet-deadline", "pool-thread"]
    registry.load([], [])  # the built-in ops, through their entry points
    assert registry.get("http.request").keeps_deadline and registry.get("llm.chat").keeps_deadline


def test_what_a_step_spends_is_in_its_trace_and_its_runs_cost(
    stub: tuple[Fleet, StubBroker],
) -> None:
    """An op that pays for a service (llm.chat: an endpoint's tokens) says so with
    note_spend; the step's trace carries the tokens and dollars, and the run's cost adds them."""
    from fleet.constants import RUN_KEY
    from fleet.sdk import note_spend, op

    @op("t.spender", classes=("cpu",), outputs=("n",))
    def spender(n: int) -> dict[str, Any]:
        note_spend(0.0025, 1200)
        note_spend(0.0005, 300)
        return {"n": n}

    client, broker = stub
    wf = Workflow("spend", inputs=["n"])
    wf.output("n", wf.step("pay", "t.spender", n=wf.input("n"), classes=["cpu"])["n"])
    run = client.submit(wf, {"n": 3})
    broker.drain()
    assert run.get(timeout=1) == {"n": 3}
    (entry,) = run.trace()
    assert (entry.tokens, entry.spent_usd) == (1500, 0.003)
    cost = float(client.store.redis.hget(RUN_KEY.format(id=run.id), "cost") or 0)
    assert cost >= 0.003


def _ends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs ended by a round trip of their own (``RunStore.succeed``), from now on."""
    ended: list[str] = []
    succeed = RunStore.succeed
    monkeypatch.setattr(
        RunStore,
        "succeed",
        lambda self, run_id, outputs: ended.append(run_id) or succeed(self, run_id, outputs),
    )
    return ended


def test_a_runs_last_step_ends_it_as_it_records(
    stub: tuple[Fleet, StubBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-step run, and a chain's last step: the step read the run's state as it began,
    so it knows it completes the run and ends it in the round trip that records it -- not
    in a round trip of its own afterwards."""
    client, broker = stub
    ended = _ends(monkeypatch)
    one = Workflow("one", inputs=["t"])
    one.output("out", one.step("a", "text.upper", text=one.input("t"))["text"])
    chain = Workflow("chain", inputs=["t"])
    b = chain.step("b", "text.upper", text=chain.input("t"))
    chain.output("out", chain.step("c", "text.stats", text=b["text"])["words"])
    first, second = client.submit(one, {"t": "x y"}), client.submit(chain, {"t": "x y z"})
    assert broker.drain() == ["a", "b", "c"]
    assert first.get(timeout=1) == {"out": "X Y"}
    assert second.get(timeout=1) == {"out": 3}
    assert ended == []  # neither ended in a round trip of its own
    assert [(e.node, e.status) for e in second.trace()] == [("b", "succeeded"), ("c", "succeeded")]


def test_a_last_step_beside_a_running_branch_leaves_the_end_to_the_engine(
    stub: tuple[Fleet, StubBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two branches nothing else reads: each may be the run's last. The first to finish
    finds the other missing from the state it began with: it does not end the run; the
    second, which began after the first had recorded, does."""
    client, broker = stub
    ended = _ends(monkeypatch)
    wf = Workflow("fork", inputs=["t"])
    up = wf.step("up", "text.upper", text=wf.input("t"))
    stats = wf.step("stats", "text.stats", text=wf.input("t"))
    wf.output("up", up["text"])
    wf.output("words", stats["words"])
    run = client.submit(wf, {"t": "a b"})
    assert sorted(c["path"] for _, c, _ in broker.sent) == ["stats", "up"]
    (id_a, call_a, run_a), (id_b, call_b, run_b) = broker.sent
    broker.sent.clear()
    # both begin before either records: each reads a state without the other
    begun = {}
    real_execute = tasks.execute

    def gated(*args: Any, **kwargs: Any) -> Any:
        begun[args[2]["path"]] = args[6] if len(args) > 6 else kwargs.get("before")
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(tasks, "execute", gated)
    tasks.step.apply(kwargs={"call": call_a, "run": run_a}, task_id=id_a)
    assert run.status() == "running"  # the other branch was not in its state
    tasks.step.apply(kwargs={"call": call_b, "run": run_b}, task_id=id_b)
    assert run.get(timeout=1) == {"up": "A B", "words": 2}
    assert ended == []  # the second ended it as it recorded
    assert all(state is not None for state in begun.values())
