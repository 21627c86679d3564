"""The fleet's Redis transport (fleet/messaging/transport.py) on a real Redis: one client per
channel instead of one per publish, for the fleet's app only, and messages that still go
through as kombu's own transport sends them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue

from fleet.config import load_config
from fleet.messaging.app import create_app
from fleet.messaging.transport import ACKED_ELSEWHERE_S, Connection, Transport, ack_commands


def test_only_redis_brokers_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Connection("redis://localhost:6379/0").transport_cls is Transport
    assert Connection("rediss://localhost:6380/0").transport_cls == "rediss"
    assert Connection("amqp://guest@localhost//").transport_cls == "amqp"
    # the URL Celery connects to decides, not the fleet's configuration: `celery -b URL`
    # and CELERY_BROKER_URL override broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest@127.0.0.1:5999//")
    app = create_app(load_config())
    assert app.connection_for_write().transport_cls == "amqp"
    # and after a failover to an alternate Redis, still this transport
    conn = Connection("redis://127.0.0.1:1/0;redis://127.0.0.1:2/0")
    conn.switch("redis://127.0.0.1:2/0")
    assert conn.transport_cls is Transport


def _publish_and_count(app: Celery, n: int) -> tuple[int, list[int]]:
    """Publish ``n`` messages through ``app``'s broker connection; how many redis clients
    that made, and what came back off the queue, in order."""
    made: list[int] = []
    real_init = redis.Redis.__init__

    def counting(self: redis.Redis, *args: object, **kwargs: object) -> None:
        made.append(1)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    name = f"transport-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange("transport-test"), routing_key=name)
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        producer.declare()
        queue(conn.default_channel).declare()
        redis.Redis.__init__ = counting  # type: ignore[method-assign]
        try:
            for i in range(n):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key=queue.name)
        finally:
            redis.Redis.__init__ = real_init  # type: ignore[method-assign]
        with conn.SimpleQueue(queue) as simple:
            got = []
            for _ in range(n):
                message = simple.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
    return len(made), got


def test_the_fleets_app_publishes_through_one_client_per_channel(redis_url: str) -> None:
    app = create_app(load_config())
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        # its URL still says redis (Flower reads the broker's address from it): kombu wrote
        # the class there
        assert conn.as_uri(include_password=True) == redis_url
        assert conn.info()["transport"] == "redis"
    made, got = _publish_and_count(app, 20)
    assert made <= 1
    assert got == list(range(20))


def test_a_users_own_app_keeps_kombus_transport(redis_url: str) -> None:
    user = Celery("user", broker=redis_url)
    with user.connection_for_write() as conn:
        assert not isinstance(conn.transport, Transport)
    made, got = _publish_and_count(user, 20)
    assert made >= 20  # kombu's own channel: a client per publish
    assert got == list(range(20))


def test_a_json_body_travels_as_it_is_and_once(redis_url: str) -> None:
    """The fleet's messages: a JSON body is not base64-encoded, a compressed (bytes) one
    is; ``argsrepr`` and ``kwargsrepr`` are in the headers only; a stock kombu consumer (a
    user's app, Flower) reads both kinds."""
    app = create_app(load_config())
    queue = f"shape-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        app.send_task("fleet.ping", args=(1,), queue=queue, argsrepr="(one,)", kwargsrepr="{}")
        app.send_task("fleet.ping", args=(2,), queue=queue, compression="zlib")
        raw = [json.loads(m) for m in reversed(client.lrange(queue, 0, -1))]
        plain, packed = raw
        assert plain["properties"]["body_encoding"] is None
        assert json.loads(plain["body"])[0] == [1]
        assert plain["headers"]["argsrepr"] == "(one,)"
        assert "argsrepr" not in plain["properties"] and "kwargsrepr" not in plain["properties"]
        assert packed["properties"]["body_encoding"] == "base64"
        user = Celery("user", broker=redis_url)  # kombu's own transport reads both
        with user.connection_for_read() as conn, conn.SimpleQueue(queue) as simple:
            bodies = [simple.get(timeout=5) for _ in range(2)]
            assert [m.decode()[0] for m in bodies] == [[1], [2]]
            for m in bodies:
                m.ack()
    finally:
        client.delete(queue)


def test_a_message_restored_without_ack_emulation_reads_as_sent(redis_url: str) -> None:
    """kombu's restore of a message it gave out (``ack_emulation`` off: a reject with
    requeue, a warm shutdown) re-encodes its decoded body with the encoding the message
    says it has: a JSON body sent as it is comes back as it was, not base64 marked plain."""
    app = create_app(load_config())
    app.conf.broker_transport_options = {"ack_emulation": False}
    queue = f"restore-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with app.connection_for_write() as conn, conn.SimpleQueue(queue) as simple:
            simple.put({"n": 1})
            message = simple.get(timeout=5)
            message.channel._restore(message)  # what kombu's QoS does with it then
            again = simple.get(timeout=5)
            assert again.payload == {"n": 1}
            again.ack()
    finally:
        client.delete(queue)


def _received(conn: Any, name: str, n: int) -> list[Any]:
    """``n`` messages published to a new queue ``name`` and received, not yet acknowledged."""
    queue = Queue(name, Exchange(name), routing_key=name)
    producer = conn.Producer()
    queue(conn.default_channel).declare()
    for i in range(n):
        producer.publish({"n": i}, exchange=queue.exchange, routing_key=name)
    got: list[Any] = []
    consumer = conn.Consumer(queue, channel=conn.channel(), callbacks=[
        lambda body, message: got.append(message)])  # fmt: skip
    consumer.consume()
    while len(got) < n:
        conn.drain_events(timeout=5)
    return got


def _all_at_once(messages: list[Any], settle: Callable[[Any], None]) -> list[BaseException]:
    """``settle`` each message from a thread of its own, all released together; the errors."""
    errors: list[BaseException] = []
    together = threading.Barrier(len(messages))

    def one(message: Any) -> None:
        together.wait()
        try:
            settle(message)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_many_threads_acknowledge_at_once_without_failing(redis_url: str) -> None:
    """A thread-pool worker (the io class: a thousand threads) acknowledges each message from
    the thread that ran it. kombu's channel pool holds 10 connections and failed the rest
    with MaxConnectionsError (388 of 400 acks at once, measured): the message stayed
    unacknowledged until the broker gave it out again. The fleet's channel waits instead."""
    app = create_app(load_config())
    with app.connection_for_write() as conn:
        got = _received(conn, f"ack-test-{uuid.uuid4().hex[:8]}", 200)
        assert _all_at_once(got, lambda message: message.ack()) == []
    held = redis.Redis.from_url(redis_url, decode_responses=True).hkeys("unacked")
    assert not {m.delivery_tag for m in got} & set(held)  # kombu's index of unacked


def test_many_threads_requeue_at_once_without_waiting_on_each_other(redis_url: str) -> None:
    """kombu restores a rejected message in a transaction that holds a connection of the
    channel's pool while it reads the exchange's table: with that pool waiting for a free
    connection, as many threads requeueing at once as it had connections each held one and
    waited for another until the wait ran out (30 s), then failed. The table is read
    through a pool of its own."""
    app = create_app(load_config())
    app.conf.broker_transport_options = {"max_connections": 4}
    name = f"requeue-test-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        got = _received(conn, name, 24)
        assert conn.default_channel.pool.max_connections == 4
        start = time.monotonic()
        assert _all_at_once(got, lambda message: message.reject(requeue=True)) == []
        assert time.monotonic() - start < 10
    assert redis.Redis.from_url(redis_url).llen(name) == 24  # every message back on its queue


def test_a_loops_acknowledgements_are_held_until_its_turn_ends(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the event loop's thread, acks are held and sent together at the end of the turn
    (the loop's tick); if Redis refuses them they stay held for the next turn; a channel
    closing sends what it holds, even when every message was acknowledged."""
    index = redis.Redis.from_url(redis_url, decode_responses=True)
    app = create_app(load_config())
    with app.connection_for_write() as conn:
        got = _received(conn, f"held-test-{uuid.uuid4().hex[:8]}", 4)
        tags = {m.delivery_tag for m in got}
        conn.transport.loop_thread = threading.get_ident()  # as a worker's loop sets it
        for message in got[:2]:
            message.ack()
        assert tags <= set(index.hkeys("unacked"))  # held, not sent yet
        with monkeypatch.context() as broken:
            broken.setattr(redis.client.Pipeline, "execute", _refused)
            conn.transport._send_held_acks()  # the tick, with Redis refusing: still held
        assert tags <= set(index.hkeys("unacked"))
        conn.transport._send_held_acks()  # the next tick
        assert not {m.delivery_tag for m in got[:2]} & set(index.hkeys("unacked"))
        for message in got[2:]:
            message.ack()
        channel = got[2].channel
        channel.close()  # the worker stops before another tick
    assert not tags & set(index.hkeys("unacked"))


def _refused(*_: Any, **__: Any) -> Any:
    raise redis.ConnectionError("Redis went away")


def test_a_message_its_step_acknowledged_frees_its_place_without_a_round_trip(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's pool process acknowledges its message in the round trip that records the
    step (``ack_commands``, with the keys the transport options name); the worker's main
    process, told so (``QoS.acked_elsewhere``), frees the message's place in the prefetch
    count and sends nothing to Redis -- any other message is acknowledged as before."""
    app = create_app(load_config())
    app.conf.broker_transport_options = {"unacked_key": "ua-test", "unacked_index_key": "uai-test"}
    index = redis.Redis.from_url(redis_url, decode_responses=True)
    with app.connection_for_write() as conn:
        got = _received(conn, f"recorded-test-{uuid.uuid4().hex[:8]}", 2)
        mine, other = got
        assert {m.delivery_tag for m in got} <= set(index.hkeys("ua-test"))
        pipe = index.pipeline(transaction=False)
        for name, args in ack_commands(app.conf.broker_transport_options, mine.delivery_tag):
            pipe.execute_command(name.upper(), *args)
        pipe.execute()  # as the step's record runs them
        assert mine.delivery_tag not in index.hkeys("ua-test")
        assert index.zscore("uai-test", mine.delivery_tag) is None
        qos = mine.channel.qos
        qos.prefetch_count = 2  # both taken: no room for another
        assert not qos.can_consume()
        with monkeypatch.context() as broken:
            broken.setattr(redis.client.Pipeline, "execute", _refused)
            qos.acked_elsewhere(mine.delivery_tag)
            mine.ack()  # no round trip: Redis "refusing" is never asked
            assert qos.can_consume()  # its place is free
            assert not qos._acked_elsewhere  # (the mark went with it)
            with pytest.raises(redis.ConnectionError):
                other.ack()  # (the other one asks Redis)
        # marks whose acknowledgement never came do not pile up: they go after a minute
        stale = time.monotonic() - ACKED_ELSEWHERE_S - 1
        qos._acked_elsewhere = {f"stale-{i}": stale for i in range(64)}
        qos.acked_elsewhere("fresh")
        assert list(qos._acked_elsewhere) == ["fresh"]
        assert other.delivery_tag in index.hkeys("ua-test")
        other.channel.qos.ack(other.delivery_tag)
        assert other.delivery_tag not in index.hkeys("ua-test")
