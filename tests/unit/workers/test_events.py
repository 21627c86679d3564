"""What a monitor reads: the events a step's message makes carry the step's name."""

from __future__ import annotations

from celery.events.state import State

from fleet.messaging.app import app


def test_a_shadowed_step_is_named_in_its_sent_event_too() -> None:
    message = app.amqp.as_task_v2(
        "t1", "fleet.step", kwargs={}, shadow="wf:node [text.upper]", create_sent_event=True
    )
    assert message.sent_event["name"] == "wf:node [text.upper]"
    # as Celery's send_task calls it: every argument up to shadow by position
    sent = app.amqp.create_task_message(
        "t0",
        "fleet.step",
        (),
        {},
        None,
        None,
        None,
        None,
        None,
        0,
        None,
        None,
        None,
        None,
        None,
        None,
        True,
        None,
        None,
        "wf:node [text.upper]",
        None,
    )
    assert sent.sent_event["name"] == "wf:node [text.upper]"
    assert message.headers["task"] == "fleet.step"  # the worker still runs fleet.step
    plain = app.amqp.as_task_v2("t2", "fleet.ping", kwargs={}, create_sent_event=True)
    assert plain.sent_event["name"] == "fleet.ping"


def test_the_name_holds_whatever_order_the_events_arrive_in() -> None:
    """Celery's event state (Flower's) takes the name of the event it merges last: the sent
    event arriving after the received one used to rename the step ``fleet.step``."""
    sent = app.amqp.as_task_v2(
        "t3", "fleet.step", kwargs={}, shadow="wf:node [text.upper]", create_sent_event=True
    ).sent_event
    received = {"uuid": "t3", "name": "wf:node [text.upper]", "hostname": "cpu@h", "clock": 2}
    state = State()
    state.event({"type": "task-received", "timestamp": 1.0, "local_received": 1.0, **received})
    state.event(
        {"type": "task-sent", "timestamp": 0.5, "local_received": 1.1, "hostname": "c", "clock": 1}
        | sent
    )
    assert state.tasks["t3"].name == "wf:node [text.upper]"
