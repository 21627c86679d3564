"""Publishing step messages: at once, or held and published together in one round trip.

A decision that makes several steps ready (a fan-out, a batch of submitted runs) publishes
their messages, each with its ``task-sent`` event, in one of kombu's publish batches: one
pipeline to a Redis broker instead of two round trips a step. While a caller works inside
:meth:`Publisher.together` (claims, parked waits, a run failed or ended) its messages are
held, and no producer is taken from the app's pool: a nested send, or a reply a run's end
sends, may need one. They are published at the end -- also when the inside failed part way:
what it claimed and made ready still goes out.

:meth:`Publisher.prepare` builds messages without publishing them: the Redis commands that
would publish each, for a step that sends its successors in the script that records it.
It builds them with Celery's own message maker and task sender, and kombu's own message
layout and Redis commands, without what ``send_task`` and kombu's ``Producer`` add around
them to publish at once: 30% less time, measured (``_Builder``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, NamedTuple

from celery import Celery
from celery.app.task import get_actual_ignore_result
from celery.utils import uuid
from kombu.common import maybe_declare
from kombu.entity import Exchange, maybe_delivery_mode
from kombu.exceptions import BatchPublishError
from kombu.messaging import Producer
from kombu.serialization import dumps

from fleet.errors import Unroutable
from fleet.store.records import Command
from fleet.store.scripts import SENT_COMMANDS

log = logging.getLogger("fleet.dispatch")
_now = threading.local()  # .preparing: inside preparing() on this thread
# the send options of a step's message (fleet.engine.dispatch; with the defaults of the
# task, where registered) that Publisher._build builds as ``send_task`` would: with any
# other, the message is built by ``send_task`` itself
_BUILT = frozenset(
    {"queue", "priority", "headers", "shadow", "argsrepr", "kwargsrepr", "time_limit",
     "soft_time_limit", "ignore_result", "serializer", "delivery_mode"}
)  # fmt: skip


@contextlib.contextmanager
def preparing() -> Iterator[None]:
    """Inside, the messages this thread builds are to be sent later, by a script that may
    not run (:meth:`Publisher.prepare`): the router raises rather than fail a run."""
    _now.preparing = True
    try:
        yield
    finally:
        _now.preparing = False


def is_preparing() -> bool:
    """Whether this thread builds messages to send later now (:func:`preparing`)."""
    return bool(getattr(_now, "preparing", False))


class Held(NamedTuple):
    """One message to publish: Celery's ``send_task(name, kwargs=..., **options)``, for node
    ``path`` of run ``run_id``."""

    name: str
    kwargs: dict[str, Any]
    options: dict[str, Any]
    run_id: str
    path: str


class Publisher:
    """``unroutable(run_id, path, error)``: what happens when Celery's router finds no queue
    for a step as it is published (the run fails, naming the node)."""

    def __init__(self, app: Celery, unroutable: Callable[[str, str, Unroutable], None]) -> None:
        self.app = app
        self.unroutable = unroutable
        self._local = threading.local()  # .held: what together() holds on this thread

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """The messages this thread publishes inside go together at the end; nested, the
        outermost publishes. An error inside stays the error raised: one in publishing what
        was held is then logged."""
        if getattr(self._local, "held", None) is not None:
            yield
            return
        held: list[Held] = []
        self._local.held = held
        try:
            yield
        except BaseException:
            self._local.held = None
            try:
                self._publish_all(held)
            except Exception:
                log.exception("could not publish %d step(s) made ready before an error", len(held))
            raise
        self._local.held = None
        self._publish_all(held)

    def publish(self, message: Held) -> None:
        """Now, or held for the end of :meth:`together`."""
        held = getattr(self._local, "held", None)
        if held is not None:
            held.append(message)
        else:
            self._one(message)

    def _one(self, message: Held, producer: Producer | None = None) -> None:
        extra = {} if producer is None else {"producer": producer}
        try:
            self.app.send_task(message.name, kwargs=message.kwargs, **message.options, **extra)
        except Unroutable as exc:
            log.warning("run %s: %s", message.run_id, exc)
            self.unroutable(message.run_id, message.path, exc)

    def prepare(self, held: list[Held], events_after: bool = True) -> Prepared | None:
        """The Redis commands that publish each message of ``held``, built as
        :meth:`publish` builds them, routed now, and not run. ``events_after``: their
        ``task-sent`` events are held for :meth:`announce`, once the messages went (after
        them, as Celery publishes a message's event after it); else their commands go with
        the message's. None when the broker is not the fleet's Redis transport. Raises what
        sending would (Unroutable), and ValueError for a message it does not build (a
        compressed body: ``task_compression``)."""
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            if (
                not getattr(channel, "keeps_commands", False)
                # kombu publishes at once on a channel that does not batch (one whose
                # commands retry themselves: broker_transport_options' retry_on_timeout)
                or not getattr(channel, "supports_batch_publish", True)
            ):
                return None
            prepared = Prepared([], [])
            for message in held:
                later = _EventsLater() if events_after else None
                builder = _Builder(producer)
                with preparing():
                    self._build(message, builder, later)
                names = [name for name, _ in builder.commands]
                if names.count("lpush") != 1 or not SENT_COMMANDS.issuperset(names):
                    return None  # (one message onto one queue, or not sent this way)
                prepared.commands.append(builder.commands)
                prepared.events.append(later.held if later is not None else [])
            return prepared

    def _build(self, message: Held, builder: _Builder, later: _EventsLater | None) -> None:
        """What ``send_task(message.name, kwargs=message.kwargs, **message.options)`` sends,
        into ``builder``; its ``task-sent`` event into ``later`` (else into ``builder``).
        Celery's own steps, less what a message built to go later does without: a
        producer of the pool, a publish that retries (nothing is published here), and --
        for a task that ignores its result, as a step does -- the ``AsyncResult`` kept as
        its child. Options other than a step message's go through ``send_task`` itself."""
        app, name, kwargs = self.app, message.name, message.kwargs
        events = {"event_dispatcher": later} if later is not None else {}
        options = dict(message.options)
        task = app._tasks.get(name)
        if task is not None:  # (send_task's defaults, from a task registered here)
            defaults = task._get_exec_options().items()
            options = dict({k: v for k, v in defaults if v is not None}, **options)
        if not _BUILT.issuperset(options):
            app.send_task(name, kwargs=kwargs, **message.options, producer=builder,
                          declare=[], **events)  # fmt: skip
            return
        time_limit, soft = options.pop("time_limit", None), options.pop("soft_time_limit", None)
        ignore_result = options.pop("ignore_result", None)
        shadow = options.pop("shadow", None)
        options = app.amqp.router.route(options, name, None, kwargs, task)
        task_id, root_id, parent_id = uuid(), None, None
        parent = app.current_worker_task
        if parent:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
            if app.conf.task_inherit_parent_priority:
                options.setdefault("priority", parent.request.delivery_info.get("priority"))
        built = app.amqp.create_task_message(
            task_id, name, None, kwargs, None, None, None, None, None, 0, None, None, None,
            app.thread_oid, time_limit, soft, app.conf.task_send_sent_event, root_id,
            parent_id, shadow, None, ignore_result=ignore_result, **options,
        )  # fmt: skip
        if not ignore_result:
            app.backend.on_task_call(builder, task_id)
        app.amqp.send_task_message(builder, name, built, declare=[], **options, **events)
        if parent and not get_actual_ignore_result(parent, parent.request):
            # the message a task sends is one of its children, stored with its result (a
            # step ignores its result: it has none to keep them in)
            parent.add_trail(app.AsyncResult(task_id))

    def announce(self, events: list[HeldEvent]) -> None:
        """Publish the ``task-sent`` events :meth:`prepare` held, of messages that went: on
        the fleet's Redis transport, built as :meth:`prepare` builds messages and sent in
        one round trip of the channel's client. An event that cannot go is logged: the step
        it tells of runs all the same."""
        if not events:
            return
        try:
            with self.app.producer_or_acquire() as producer:
                channel = producer.channel  # (the fleet's transport: held events come
                builder = _Builder(producer)  # only from prepare, which needs it)
                for kind, fields, options in events:
                    self._events.publish(kind, fields, builder, **options)
                with channel.conn_or_acquire() as client:
                    if len(builder.commands) == 1:  # (a pipeline of one costs more)
                        name, args = builder.commands[0]
                        client.execute_command(name.upper(), *args)
                        return
                    pipe = client.pipeline(transaction=False)
                    for name, args in builder.commands:
                        pipe.execute_command(name.upper(), *args)
                    pipe.execute()
        except Exception as exc:
            log.warning("could not publish %d task-sent event(s): %s", len(events), exc)

    @cached_property
    def _events(self) -> Any:
        """Celery's own dispatcher for events published with a producer of one's own (the
        app's clock; what ``send_task`` publishes ``task-sent`` with)."""
        # (an event it cannot build raises here, not into a buffer never flushed)
        return self.app.events.Dispatcher(enabled=False, buffer_while_offline=False)

    def _publish_all(self, held: list[Held]) -> None:
        """Every message and its ``task-sent`` event in one batch (a transport without
        batches, such as RabbitMQ's, publishes each at once). A lone message without task
        events is published as it is: a batch of one costs more (measured). A message that
        fails does not keep the others from going; the first error is raised after. A batch
        the broker may not have taken whole is published again message by message, with
        kombu's retries: a step sent twice runs once (its start lease)."""
        if len(held) == 1 and not self.app.conf.task_send_sent_event:
            self._one(held[0])
            return
        if not held:
            return
        try:
            with self.app.producer_or_acquire() as producer, producer.batch():
                error = _each(held, lambda message: self._one(message, producer))
        except BatchPublishError as exc:
            log.warning("%s (%s); publishing %d step(s) again", exc, exc.__cause__, len(held))
            error = _each(held, self._one)
        if error is not None:
            raise error


HeldEvent = tuple[str, dict[str, Any], dict[str, Any]]  # (type, fields, publish options)


class Prepared(NamedTuple):
    """Messages built and not published (:meth:`Publisher.prepare`): for each, the broker's
    commands that publish it and the ``task-sent`` events to publish after."""

    commands: list[list[Command]]
    events: list[list[HeldEvent]]


class _Builder:
    """A kombu ``Producer`` for Celery's task sender that publishes nothing: each message it
    is given becomes the Redis commands that would publish it (``commands``), built by
    kombu's own steps -- its serializer, the channel's message layout and routing (the
    fleet's transport: an LPUSH onto a queue, a PUBLISH of an event)."""

    def __init__(self, producer: Producer) -> None:
        self.channel = producer.channel
        self.connection = producer.connection
        self.exchange = producer.exchange
        self.commands: list[Command] = []

    def publish(
        self,
        body: Any,
        routing_key: str | None = None,
        delivery_mode: Any = None,
        mandatory: bool = False,
        immediate: bool = False,
        priority: int = 0,
        content_type: str | None = None,
        content_encoding: str | None = None,
        serializer: str | None = None,
        headers: dict[str, Any] | None = None,
        compression: str | None = None,
        exchange: Exchange | str | None = None,
        retry: bool = False,
        retry_policy: dict[str, Any] | None = None,
        declare: list[Any] | None = None,
        expiration: float | None = None,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
        **properties: Any,
    ) -> None:
        """kombu's ``Producer.publish``, into :attr:`commands`: the same message."""
        if compression or content_type:  # (Celery's sender serializes; compressed: kombu's)
            raise ValueError(f"a body compressed ({compression}) or serialized already")
        channel = self.channel
        own: Any = exchange if isinstance(exchange, Exchange) else self.exchange
        name = own.name if isinstance(exchange, Exchange) else exchange or ""
        properties["delivery_mode"] = maybe_delivery_mode(delivery_mode or own.delivery_mode)  # type: ignore[no-untyped-call]
        if expiration is not None:
            properties["expiration"] = str(int(expiration * 1000))
        content_type, content_encoding, body = dumps(body, serializer=serializer)  # type: ignore[no-untyped-call]
        message = channel.prepare_message(
            body, priority, content_type, content_encoding, headers or {}, properties
        )
        declared = channel.connection.client.declared_entities
        for entity in declare or ():  # (an event's exchange: declared once, as kombu would;
            if hash(entity) not in declared:  # kombu binds a copy first, each time)
                maybe_declare(entity, channel)  # type: ignore[no-untyped-call]
        channel.basic_publish(message, name, routing_key or "", _publish_batch=self)

    def add(self, name: str, *args: Any) -> None:
        """kombu's publish batch interface: where the Redis channel puts its commands."""
        self.commands.append((name, args))


class _EventsLater:
    """An event dispatcher for ``send_task`` that holds the events it is given."""

    def __init__(self) -> None:
        self.held: list[HeldEvent] = []

    def publish(self, kind: str, fields: dict[str, Any], producer: Any, **options: Any) -> None:
        self.held.append((kind, fields, options))


def _each(held: list[Held], publish: Callable[[Held], None]) -> Exception | None:
    """``publish`` every message; the first error, after all were tried."""
    first: Exception | None = None
    for message in held:
        try:
            publish(message)
        except Exception as exc:
            first = first or exc
    return first
