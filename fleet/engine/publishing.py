"""Publishing step messages: at once, or held and published together in one round trip.

A decision that makes several steps ready (a fan-out, a batch of submitted runs) publishes
their messages, each with its ``task-sent`` event, in one of kombu's publish batches: one
pipeline to a Redis broker instead of two round trips a step. While a caller works inside
:meth:`Publisher.together` (claims, parked waits, a run failed or ended) its messages are
held, and no producer is taken from the app's pool: a nested send, or a reply a run's end
sends, may need one. They are published at the end -- also when the inside failed part way:
what it claimed and made ready still goes out.

:meth:`Publisher.prepare` builds messages without publishing them: the Redis commands that
would publish each (the fleet's broker transport keeps them inside :func:`capturing`), for
a step that sends its successors in the script that records it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, NamedTuple

from celery import Celery
from kombu.exceptions import BatchPublishError
from kombu.messaging import Producer

from fleet.errors import Unroutable
from fleet.store.records import Command
from fleet.store.scripts import SENT_COMMANDS

log = logging.getLogger("fleet.dispatch")
_kept = threading.local()  # .commands: what capturing() keeps on this thread


@contextlib.contextmanager
def capturing() -> Iterator[list[Command]]:
    """The Redis commands of the messages this thread publishes in a publish batch of the
    fleet's broker transport inside (``producer.batch()``: fleet.messaging.transport), kept
    in the list it gives instead of run."""
    commands: list[Command] = []
    _kept.commands = commands
    try:
        yield commands
    finally:
        _kept.commands = None


def captured() -> list[Command] | None:
    """Where this thread's publish batches keep their commands now (None: they run them)."""
    return getattr(_kept, "commands", None)


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
        them, as Celery publishes a message's event after it: building them is not on the
        way to the next step); else their commands go with the message's. None when the
        broker is not the fleet's Redis transport. Raises what sending would (Unroutable)."""
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            if (
                not getattr(channel, "keeps_commands", False)
                # kombu publishes at once on a channel that does not batch (one whose
                # commands retry themselves: broker_transport_options' retry_on_timeout)
                or not getattr(channel, "supports_batch_publish", True)
                or getattr(producer._batch_local, "current", None)  # (a batch open on it
                # would take the messages: never, from a step)
            ):
                return None
            prepared = Prepared([], [])
            for message in held:
                later = _EventsLater()
                extra = {"event_dispatcher": later} if events_after else {}
                with capturing() as commands, producer.batch():
                    self.app.send_task(
                        message.name,
                        kwargs=message.kwargs,
                        **message.options,
                        producer=producer,
                        # (no queue declared: the message goes to the anonymous exchange,
                        # an LPUSH onto the queue's list, which needs no binding; kombu's
                        # check that the queue was declared copied it on every message)
                        declare=[],
                        **extra,
                    )
                names = [name for name, _ in commands]
                if names.count("lpush") != 1 or not SENT_COMMANDS.issuperset(names):
                    return None  # (one message onto one queue, or not sent this way)
                prepared.commands.append(commands)
                prepared.events.append(later.held)
            return prepared

    def announce(self, events: list[HeldEvent]) -> None:
        """Publish the ``task-sent`` events :meth:`prepare` held, of messages that went. An
        event that cannot go is logged: the step it tells of runs all the same."""
        if not events:
            return
        try:
            # (one event alone is published as it is: a batch of one costs more)
            with (
                self.app.producer_or_acquire() as producer,
                producer.batch() if len(events) > 1 else contextlib.nullcontext(),
            ):
                for kind, fields, options in events:
                    self._events.publish(kind, fields, producer, **options)
        except Exception as exc:
            log.warning("could not publish %d task-sent event(s): %s", len(events), exc)

    @cached_property
    def _events(self) -> Any:
        """Celery's own dispatcher for events published with a producer of one's own (the
        app's clock; what ``send_task`` publishes ``task-sent`` with)."""
        return self.app.events.Dispatcher(enabled=False)

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
