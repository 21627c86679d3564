"""The fleet's result backend: no pub/sub subscription or pending-result growth per workflow,
while AsyncResult.get() and GroupResult.get() keep working."""

from __future__ import annotations

import pytest
import redis
from celery import group

from fleet import Workflow
from fleet.client.client import Fleet

pytestmark = pytest.mark.integration


def _echo(app, value: int):  # type: ignore[no-untyped-def]
    return app.signature("fleet.ping", args=(value,), queue="cpu")


def test_runs_leave_no_subscriptions_or_pending_results(client: Fleet, broker: redis.Redis) -> None:
    wf = Workflow("fan", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"))
    b = wf.step("b", "text.stats", text=wf.input("t"))
    c = wf.step("c", "text.template", template="${x}${y}", x=a["text"], y=b["words"])
    wf.output("out", c["text"])
    runs = [client.submit(wf, {"t": f"run {i}"}) for i in range(10)]
    assert all(r.get(timeout=30)["out"].startswith("RUN") for r in runs)
    assert broker.pubsub_channels("celery-task-meta-*") == []
    pending_concrete, pending_weak = client.app.backend._pending_results
    assert len(pending_concrete) == 0 and len(pending_weak) == 0


def test_celery_results_can_still_be_awaited(client: Fleet) -> None:
    app = client.app
    single = _echo(app, 7).apply_async()
    assert single.get(timeout=20) == 7
    many = group(_echo(app, i) for i in range(3)).apply_async()
    assert many.get(timeout=20) == [0, 1, 2]
