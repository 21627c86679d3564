"""A step's start lease, taken as its worker receives the message (workers/receipt.py): real
step messages through the fleet's transport on a real Redis, taken off their queue as a
worker's consumer takes them (kombu's ``basic_consume``), and the pool process's side
(``workers.recovery.begin``) on a real task's request."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Ignore
from kombu import Message

from fleet.config import load_config
from fleet.constants import (
    BEGIN_HEADER,
    BEGUN_HEADER,
    RUN_KEY,
    RUN_LEASES_KEY,
    RUN_OUTPUTS_KEY,
    STEP_TASK,
)
from fleet.messaging.app import create_app
from fleet.messaging.transport import QoS
from fleet.store.leases import Leases, read_begin
from tests.support.consuming import take
from workers import recovery, tasks
from workers.receipt import Receipt
from workers.runtime import WorkerRuntime

WORKER = "w1@receipt-test"


@pytest.fixture
def receiving() -> Iterator[Receipt]:
    receipt = Receipt(WORKER, 30.0, 600)
    QoS.receipt = receipt
    yield receipt
    QoS.receipt = None


@pytest.fixture
def run_id(client: redis.Redis) -> str:
    rid = f"receipt-{uuid.uuid4().hex[:8]}"
    client.hset(RUN_KEY.format(id=rid), "status", "running")
    client.hset(RUN_OUTPUTS_KEY.format(id=rid), "__inputs__", json.dumps({"t": "x"}))
    return rid


@pytest.fixture
def channel() -> Iterator[Any]:
    """A worker's channel: the fleet's transport. (Closing it restores what it took.)"""
    with create_app(load_config()).connection_for_write() as conn:
        yield conn.default_channel


def _send_and_take(
    channel: Any,
    run_id: str,
    path: str = "a",
    state: int = 1,
    task: str = STEP_TASK,
    **options: Any,
) -> Message:
    """A step's message for ``path`` of ``run_id``, sent as the engine sends one, and taken
    off its queue through ``channel`` as a worker's consumer takes it."""
    sender = Celery("receipt-test", broker=channel.connection.client.as_uri(True))
    queue = f"receipt-{uuid.uuid4().hex[:8]}"  # (a plain app: no router, its own queue)
    headers = {BEGIN_HEADER: [run_id, path, 0, state], **options.pop("headers", {})}
    call = {"path": path, "op": "text.upper", "args": {"text": "x"}}
    kwargs = {"call": call, "run": {"id": run_id}}
    sender.send_task(task, kwargs=kwargs, queue=queue, headers=headers, **options)
    return take(channel, queue)


def test_the_receipt_takes_the_lease_and_tells_the_pool_process(
    receiving: Receipt, channel: Any, client: redis.Redis, run_id: str
) -> None:
    message = _send_and_take(channel, run_id)
    token, at, tag, reply = message.headers[BEGUN_HEADER]
    assert token.startswith(WORKER + "/") and abs(time.time() - at) < 5
    assert tag == message.delivery_tag == message.properties["delivery_tag"]
    found = read_begin(reply)
    assert found is not None and found.verdict == "run" and found.status == "running"
    assert found.state == {"__inputs__": json.dumps({"t": "x"})}  # asked for by its sender
    held = client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0")
    assert held is not None and held.startswith(token + "|")
    # kombu's record of the message is made as always, and holds the message as it came: a
    # copy restored from it carries no verdict of this receipt's
    stored = json.loads(client.hget("unacked", message.delivery_tag) or "null")
    assert stored is not None and BEGUN_HEADER not in stored[0]["headers"]


def test_a_second_copy_finds_the_lease_held(receiving: Receipt, channel: Any, run_id: str) -> None:
    first = read_begin(_send_and_take(channel, run_id).headers[BEGUN_HEADER][3])
    second = read_begin(_send_and_take(channel, run_id).headers[BEGUN_HEADER][3])
    assert first is not None and first.verdict == "run"
    assert second is not None and second.verdict == "held" and second.wait_s > 20
    b = _send_and_take(channel, run_id, path="b", state=0)
    unasked = read_begin(b.headers[BEGUN_HEADER][3])
    assert unasked is not None and unasked.verdict == "run" and unasked.state is None


def test_what_waits_in_the_worker_and_other_tasks_take_nothing(
    receiving: Receipt, channel: Any, client: redis.Redis, run_id: str
) -> None:
    stale = {BEGUN_HEADER: ["someone/else/x", time.time(), "1", ["running", 0, "run", 0, "0"]]}
    later = _send_and_take(channel, run_id, countdown=30, headers=stale)  # a copy sent for later
    assert BEGUN_HEADER not in later.headers  # not even one it was sent with
    ping = _send_and_take(channel, run_id, task="fleet.ping")
    assert BEGUN_HEADER not in ping.headers
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0") is None
    for message in (later, ping):  # (recorded as unacknowledged all the same)
        assert client.hexists("unacked", message.delivery_tag)


def test_a_message_read_with_basic_get_takes_no_lease(
    receiving: Receipt, channel: Any, client: redis.Redis, run_id: str
) -> None:
    """The orphan check drains a gone worker's queue with a SimpleQueue (basic_get) in a
    worker's main process and sends each step again: those are no steps this worker's pool
    will start, and a lease taken for them would keep every copy waiting (review)."""
    sender = Celery("receipt-test", broker=channel.connection.client.as_uri(True))
    queue = f"receipt-{uuid.uuid4().hex[:8]}"
    headers = {BEGIN_HEADER: [run_id, "a", 0, 0]}
    sender.send_task(STEP_TASK, kwargs={}, queue=queue, headers=headers)
    message = None
    for _ in range(50):
        message = channel.basic_get(queue)
        if message is not None:
            break
        time.sleep(0.02)
    assert message is not None and BEGUN_HEADER not in message.headers
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0") is None
    assert client.hexists("unacked", message.delivery_tag)  # recorded as kombu does
    # and the channel's consumer takes leases again after it
    assert BEGUN_HEADER in _send_and_take(channel, run_id, path="b").headers


def test_a_redis_without_the_script_loads_it_for_the_next(
    receiving: Receipt, channel: Any, client: redis.Redis, run_id: str
) -> None:
    assert BEGUN_HEADER in _send_and_take(channel, run_id, path="x").headers  # (loaded it)
    client.script_flush()  # as a restarted Redis
    first = _send_and_take(channel, run_id)
    assert BEGUN_HEADER not in first.headers  # its pool process takes the lease
    again = _send_and_take(channel, run_id, path="b")
    assert read_begin(again.headers[BEGUN_HEADER][3]) is not None


def test_a_receipt_that_fails_leaves_the_message_as_kombu_would(
    channel: Any, client: redis.Redis, run_id: str
) -> None:
    def broken(message: Message, pipe: Any) -> None:
        pipe.hset("receipt-test-never", "x", "1")
        raise RuntimeError("a bug in a receipt")

    QoS.receipt = broken
    try:
        message = _send_and_take(channel, run_id)
    finally:
        QoS.receipt = None
    assert client.hexists("unacked", message.delivery_tag)
    assert not client.exists("receipt-test-never")  # what it added went with it


# The pool process's side: workers.recovery.begin on the real step task's request.


@pytest.fixture
def rt(redis_url: str) -> WorkerRuntime:
    cfg = load_config().model_copy(update={"broker_url": redis_url, "backend_url": redis_url})
    runtime = WorkerRuntime(tasks.app)
    runtime.cfg = cfg
    runtime.engine.cfg = cfg
    runtime.leases = Leases(runtime.store.redis, cfg.run_ttl, 30.0)
    return runtime


def _begin_with(rt: WorkerRuntime, run_id: str, request: dict[str, Any]) -> recovery.Lease:
    call: Any = {"path": "a", "op": "text.upper", "kind": "compute", "args": {}}
    call |= {"classes": ["cpu"], "retries": 0, "timeout": None}
    tasks.step.push_request(**{"hostname": WORKER, "retries": 0, **request})
    try:
        return recovery.begin(tasks.step, rt, call, {"id": run_id}, state=True)
    finally:
        tasks.step.pop_request()


def _received_request(message: Message) -> dict[str, Any]:
    """What a pool process's task request holds of a message (Celery's Request)."""
    return {**message.headers, "properties": message.properties}


def test_the_pool_process_holds_the_lease_its_receipt_took(
    receiving: Receipt, channel: Any, rt: WorkerRuntime, client: redis.Redis, run_id: str
) -> None:
    message = _send_and_take(channel, run_id)
    token = message.headers[BEGUN_HEADER][0]
    lease = _begin_with(rt, run_id, _received_request(message))
    try:
        assert lease.state == {"__inputs__": json.dumps({"t": "x"})}
        assert ("a@0", token) in [(field, t) for _, field, t in rt.keeper.held()]
        assert (client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0") or "").startswith(token)
    finally:
        lease.release()


def test_a_verdict_for_another_message_or_one_that_waited_is_not_taken_on_trust(
    receiving: Receipt, channel: Any, rt: WorkerRuntime, client: redis.Redis, run_id: str
) -> None:
    message = _send_and_take(channel, run_id)
    token, at, tag, reply = message.headers[BEGUN_HEADER]
    # another delivery's verdict ("run") is not this one's: this copy asks for itself, and
    # finds the lease held by the copy the verdict was for
    other = {**_received_request(message), "properties": {"delivery_tag": "another"}}
    with pytest.raises(Ignore):  # (sent again for when that lease would lapse)
        _begin_with(rt, run_id, other)
    for key in client.scan_iter("cpu*"):  # (that copy: no worker here takes it)
        client.delete(key)
    # a message that waited in its worker past a third of the lease takes it again, as its
    # holder: the lease is its own still, renewed from now
    client.hset(RUN_LEASES_KEY.format(id=run_id), "a@0", f"{token}|{time.time() + 1:.3f}")
    waited = {**_received_request(message), BEGUN_HEADER: [token, at - 20, tag, reply]}
    lease = _begin_with(rt, run_id, waited)
    try:
        held = client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0") or ""
        assert held.startswith(token + "|") and float(held.rpartition("|")[2]) > time.time() + 20
    finally:
        lease.release()
