"""The fleet's Redis broker transport: kombu's, with one client per channel, not per publish.

kombu's Redis channel builds a new ``redis.Redis`` for every message it publishes and every
event it fans out (``Channel.conn_or_acquire``). With redis-py 8 that costs about 0.2 ms of
CPU each (the client fills a table of about 170 reply callbacks): a submission publishes
twice (the step and its ``task-sent`` event), a step's worker three to four times (its task
events and the next steps). This channel keeps the client and reuses it while the channel's
connection pool is the same; a client is only a handle on that pool (it holds no
connection), and redis-py clients are safe to share between threads. And its pool waits for
a free connection where kombu's fails (:meth:`Channel._get_pool`).

Only the fleet's own Celery app uses it, for a ``redis://`` broker URL -- the one Celery
actually connects to, ``-b`` and ``CELERY_BROKER_URL`` included (:class:`Connection`, the
fleet app's connection class, picks it from the URL's scheme): a user's app keeps kombu's,
and so do ``rediss://`` and RabbitMQ. Everything else -- the messages, the queues, the
fanout of events, acknowledgement and restore -- is kombu's, unchanged; its connections
still call themselves ``redis://`` (Flower reads the broker's address from there).

Its channel says it ``keeps_commands``: given a publish batch of the caller's, it puts the
Redis commands of a message there (kombu's own: the queue's LPUSH, an event's PUBLISH),
for the caller to run in a script of its own -- a step sends its successors in the round
trip that records it (:meth:`fleet.engine.publishing.Publisher.prepare`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from fleet.store.connection import POOL_WAIT_S
from fleet.store.records import Command

log = logging.getLogger(__name__)
# How long a message's mark that its step's record acknowledged it waits for the worker's
# own acknowledgement of it (QoS.acked_elsewhere): that comes within the loop's next turns.
ACKED_ELSEWHERE_S = 60.0
# A worker's addition to the round trip that records a message it takes (QoS.receipt).
Receipt = Callable[[Any, Any], Callable[[list[Any]], None] | None]


def _waiting(pool: Any) -> redis.BlockingConnectionPool:
    """A pool like ``pool`` (kombu's, with its size) that waits for a free connection."""
    return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
        max_connections=pool.max_connections,
        timeout=POOL_WAIT_S,
        connection_class=pool.connection_class,
        **pool.connection_kwargs,
    )


class QoS(kombu_redis.QoS):
    """kombu's, with the acknowledgements one turn of a worker's loop makes sent together.

    A worker on Celery's event loop acknowledges every message from the loop's thread (the
    pool's threads hand their acknowledgements to it): kombu sends each in a round trip of
    its own, and an io worker finishing hundreds of calls a second spent a fifth of that
    thread's time on them -- the thread that takes messages in. Here the loop's thread
    holds them, and they go in one round trip before the loop next waits on the broker
    (:meth:`Transport.register_with_event_loop`): within the same turn, so no message is
    acknowledged later than the turn it was acknowledged in. Any other thread, or a
    worker without the loop (gevent), acknowledges as kombu does."""

    # What a worker does in the round trip that records each message it takes (kombu's
    # ``append``): given the message and that round trip's pipeline, it may add commands,
    # and returns what to do with their replies -- a fleet worker takes a step's start lease
    # there (workers.receipt). Set once per worker process; None: kombu's round trip alone.
    receipt: Receipt | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._held: list[str] = []
        # messages acknowledged in Redis by another round trip (their step's record): their
        # acknowledgement here is the prefetch count's alone
        self._acked_elsewhere: dict[str, float] = {}  # delivery tag: when (monotonic)
        self.consuming = True  # (not while the channel's basic_get takes a message)

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Messages taken meanwhile are not a consumer's (no ``receipt``)."""
        self.consuming = False
        try:
            yield
        finally:
            self.consuming = True

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's (the message is recorded as unacknowledged), with what ``receipt`` adds
        to its round trip for a message a consumer takes. A receipt that fails leaves the
        message as kombu would."""
        receipt = type(self).receipt  # (a function set there is not a method)
        if receipt is None or not self.consuming:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
        then = None
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            try:
                then = receipt(message, pipe)
            except Exception:
                log.exception("receipt of message %s", delivery_tag)
                pipe.command_stack[2:] = []
            replies = pipe.execute(raise_on_error=False)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
        for reply in replies[:2]:
            if isinstance(reply, Exception):
                raise reply
        if then is not None:
            try:
                then(replies[2:])
            except Exception:
                log.exception("receipt of message %s", delivery_tag)

    def acked_elsewhere(self, delivery_tag: str) -> None:
        """The message was acknowledged in Redis by the round trip that recorded its step
        (:func:`ack_commands`, run by the step's pool process): its acknowledgement, which
        follows -- at once, or on the loop's thread (Celery defers a thread pool's) -- only
        frees its place in the prefetch count. A mark whose acknowledgement never came goes
        after ACKED_ELSEWHERE_S (a copy given out again under the same tag is then
        acknowledged in Redis as any other)."""
        now = time.monotonic()
        marks = self._acked_elsewhere
        if len(marks) >= 64:  # (each acknowledgement takes its own: few are left here)
            for tag, when in list(marks.items()):
                if now - when > ACKED_ELSEWHERE_S:
                    marks.pop(tag, None)
        marks[delivery_tag] = now

    def ack(self, delivery_tag: str) -> None:
        if self._acked_elsewhere.pop(delivery_tag, None) is not None:
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        if getattr(self.channel.connection, "loop_thread", None) != threading.get_ident():
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        self._held.append(delivery_tag)
        # the prefetch count's share now; Redis's with the others
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    def send_held(self) -> None:
        """Send the acknowledgements held, in one round trip. If Redis refuses, they are
        held again (removing an acknowledged message twice is harmless)."""
        if not self._held:
            return
        tags, self._held = self._held, []
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in tags:
                    self._remove_from_indices(tag, pipe)  # type: ignore[no-untyped-call]
                pipe.execute()
        except BaseException:
            self._held[:0] = tags
            raise

    def _send_held_quietly(self) -> None:
        try:
            self.send_held()
        except Exception:
            log.exception("could not acknowledge %d message(s)", len(self._held))

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        """A channel closing (a worker stopping, a connection lost): what was acknowledged
        is not given out again -- kombu restores only what was never acknowledged, and
        with every message acknowledged it would not even come here."""
        self._send_held_quietly()
        return super().restore_unacked_once(stderr)  # type: ignore[no-untyped-call]

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """What a message taken long ago needs before kombu gives it out again: if it was
        acknowledged this turn, that acknowledgement."""
        self._send_held_quietly()
        return super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]


def ack_commands(options: Mapping[str, Any] | None, delivery_tag: str) -> list[Command]:
    """The Redis commands that acknowledge message ``delivery_tag`` -- kombu's own
    (``QoS._remove_from_indices``), with the keys the broker's transport ``options`` name --
    for a round trip of the caller's: a step's pool process acknowledges its message as it
    records the step (its worker's main process is then told: :meth:`QoS.acked_elsewhere`)."""
    opts = options or {}
    index = str(opts.get("unacked_index_key") or kombu_redis.Channel.unacked_index_key)
    table = str(opts.get("unacked_key") or kombu_redis.Channel.unacked_key)
    return [("zrem", (index, delivery_tag)), ("hdel", (table, delivery_tag))]


class Channel(kombu_redis.Channel):
    QoS = QoS
    _fleet_client: Any = None
    _fleet_tables: tuple[Any, Any] | None = None  # (the channel's pool, the tables' client)

    # the fleet's transport: Publisher.prepare builds its messages as Redis commands (kombu
    # 5.7's ``basic_publish(..., _publish_batch=batch)`` puts them in the caller's ``batch``)
    keeps_commands = True
    # A JSON body travels as it is, where kombu base64-encodes every body (a third more
    # bytes, each read and written again by Redis, the worker's main process and its pool
    # child): a bytes body (compressed, binary) still is. ``transport_options``'
    # ``body_encoding`` still sets one. Any kombu consumer reads both (``body_encoding``).
    body_encoding = None  # type: ignore[assignment]

    def _inplace_augment_message(
        self, message: dict[str, Any], exchange: str, routing_key: str
    ) -> None:
        """kombu's, for a message published: a bytes body is base64-encoded where no
        encoding is set. (Not in ``encode_body``: kombu's restore of an unacknowledged
        message encodes its decoded body with the encoding the message says it has.)"""
        encoding = self.body_encoding
        if encoding is None and not isinstance(message["body"], str):
            encoding = "base64"
        message["body"], encoding = self.encode_body(message["body"], encoding)  # type: ignore[no-untyped-call]
        props = message["properties"]
        props.update(body_encoding=encoding, delivery_tag=self._next_delivery_tag())  # type: ignore[no-untyped-call]
        props["delivery_info"].update(exchange=exchange, routing_key=routing_key)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """kombu's, without the worker's receipt (``QoS.receipt``): a message read this way
        -- a SimpleQueue's get, the orphan check draining a gone worker's queue -- is not
        one this worker's pool will start."""
        with self.qos.aside():
            return super().basic_get(queue, no_ack, **kwargs)  # type: ignore[no-untyped-call]

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """kombu's pool for the channel's commands (publish, ack, restore), made to wait for a
        free connection instead of failing: a thread-pool worker acknowledges each message
        from the thread that ran it, and more than ``max_connections`` (10) acknowledging
        at once failed with ``MaxConnectionsError`` -- the message stayed unacknowledged
        until the broker gave it out again."""
        pool = super()._get_pool(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return pool if asynchronous else _waiting(pool)

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        """kombu's, through a pool of its own. kombu reads a table inside the transaction
        that restores a message (``QoS.restore_by_tag``: a reject with requeue, a restore
        of unacknowledged ones), holding a connection of the channel's pool while it asks
        for another: with that pool waiting for a free connection, as many threads
        restoring at once as it had connections each held one and waited for a second,
        until the wait ran out. A read of a table holds nothing while it waits."""
        pool = self.pool
        found = self._fleet_tables
        if found is None or found[0] is not pool:
            extra = {}
            if (provider := pool.connection_kwargs.get("credential_provider")) is not None:
                extra["credential_provider"] = provider
            found = self._fleet_tables = (
                pool,
                self.Client(connection_pool=_waiting(pool), **extra),
            )
        values = found[1].smembers(self.keyprefix_queue % exchange)
        return [tuple(bytes_to_str(v).split(self.sep)) for v in values]  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._fleet_client
        if client is None or client.connection_pool is not pool:
            client = self._fleet_client = super()._create_client(False)  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
    loop_thread: int | None = None  # the thread of the event loop that sends held acks

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        self.loop_thread = threading.get_ident()
        previous = getattr(loop, "_fleet_send_held", None)  # a transport of an earlier connection
        if previous is not None:
            loop.on_tick.discard(previous)
            loop.on_close.discard(previous)
        loop._fleet_send_held = self._send_held_acks
        loop.on_tick.add(self._send_held_acks)
        loop.on_close.add(self._send_held_acks)

    def _reject_inbound_message(self, raw_message: Any) -> None:
        """kombu's, for a message that came in with no consumer left for it (cancelled as
        its BRPOP was answered): put back without the worker's receipt -- no pool process
        here starts it."""
        with contextlib.ExitStack() as stack:
            for channel in self.channels:
                if channel:
                    stack.enter_context(channel.qos.aside())
            super()._reject_inbound_message(raw_message)  # type: ignore[no-untyped-call]

    def _send_held_acks(self, closing: Any = None) -> None:
        """Each turn of the loop, before it waits: every channel's held acknowledgements.
        When the loop closes (``closing``: the loop), also this transport's last hold:
        what the loop still runs as it closes is acknowledged at once. A failure is logged
        as kombu's own acknowledgement logs one (the message stays unacknowledged, and is
        given out again after visibility_timeout); what failed stays held for next time."""
        if closing is not None:
            self.loop_thread = None
        cycle: Any = self.cycle  # kombu's MultiChannelPoller
        for channel in list(cycle._channels):
            channel.qos._send_held_quietly()


class Connection(kombu_connection.Connection):
    """kombu's connection, with this transport wherever kombu would take its own Redis one
    (a ``redis://`` URL, at the start and after a failover to an alternate: kombu sets the
    transport from each URL), and naming it ``redis`` in its URL and info (kombu would
    write the class there)."""

    # kombu resolves by the transport it was given, a name or (here) a class
    resolve_aliases = {**kombu_connection.resolve_aliases, Transport: "redis"}  # type: ignore[dict-item]

    def _init_params(self, **params: Any) -> None:  # type: ignore[override]
        if params.get("transport") == "redis":
            params["transport"] = Transport
        super()._init_params(**params)  # type: ignore[no-untyped-call]
