"""The fleet worker's Celery consumer: Celery's, with its task events published in batches.

A worker on Celery's event loop (prefork, threads) buffers its task events
(``task-received``, ``task-started``, ``task-succeeded``...) and asks its loop to publish
the buffer at the next turn. A busy loop turns for every message it takes in, so the
buffer goes out one or two events at a time: a broker publish, with its serialising, for
nearly every event, all on the loop's thread -- the thread that takes the next message in.
Measured on an io worker holding a thousand API calls: the loop spent 29% of its time
publishing events, and that thread was the process's bottleneck.

Here the first event buffered after a publish asks for one publish ``event_flush_s`` later
(0.05 s by default); every event buffered meanwhile goes with it. Celery still publishes at
once a buffer that reaches its limit (24 events), and the events still go in the order they
happened, as Celery's ``task.multi`` batches that Flower and ``celery events`` read. A
monitor sees an event about ``event_flush_s`` later (plus whatever the loop is busy with).
``event_flush_s = 0``: Celery's own behaviour. A worker that stops, or loses its broker
connection, publishes what it holds first (on a lost connection Celery's dispatcher keeps
what it could not publish until it reconnects, as it does for its own buffer).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from fleet.messaging.app import fleet_config

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery is untyped
    """Celery's consumer, publishing its buffered task events every ``event_flush_s``."""

    _flush_due = 0.0  # when the publish asked for runs (0: none asked for)

    @property
    def event_flush_s(self) -> float:
        return float(fleet_config(self.app).event_flush_s)

    def on_send_event_buffered(self) -> None:
        """Called by any thread that buffered an event."""
        delay = self.event_flush_s
        if not self.hub or delay <= 0:
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        # One publish asked for at a time -- unless it is long overdue (a broker reconnection
        # resets the loop's timers): then asked for again, so no event waits for good.
        if self._flush_due and now < self._flush_due + 10 * delay:
            return
        self._flush_due = now + delay
        self.hub.call_soon(self._flush_later)  # the loop's timers belong to its thread

    def _flush_later(self) -> None:
        self.hub.call_later(self.event_flush_s, self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = 0.0  # first: an event buffered during the publish asks again
        self._flush_events()

    def _flush_held(self) -> None:
        """Publish what is held now. On a broken connection Celery's dispatcher keeps what
        it could not publish and publishes it after the consumer reconnects."""
        self._flush_due = 0.0
        try:
            self._flush_events()
        except Exception:  # a broker already gone: the consumer's own path goes on
            log.warning("could not publish the last task events", exc_info=True)

    def on_close(self) -> None:
        """The connection was lost: the events held would be dropped with the old
        dispatcher (Celery keeps only what it failed to publish, and publishes that once it
        has reconnected), and the timer that was to publish them is cancelled. They join
        what Celery keeps -- no publish here, on a connection that may hang."""
        self._flush_due = 0.0
        dispatcher = self.event_dispatcher
        if dispatcher is not None:
            with dispatcher.mutex:
                for group, events in dispatcher._group_buffer.items():
                    if events:
                        dispatcher._outbound_buffer.append((list(events), f"{group}.multi"))
                        events.clear()
        super().on_close()

    def stop(self) -> Any:
        self._flush_held()  # before the heart stops: no task event after worker-offline
        return super().stop()

    def shutdown(self) -> Any:
        self._flush_held()
        return super().shutdown()
