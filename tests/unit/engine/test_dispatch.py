"""What the dispatcher puts on a step's message: the run's priority and the node's deadline
(every step carries them; there is no control task to forget them on)."""

from __future__ import annotations

from typing import Any

from fleet.config import FleetConfig
from fleet.engine.dispatch import Dispatcher
from fleet.engine.readiness import StepCall
from fleet.sdk.registry import registry
from fleet.store.runs import RunStore


class Recorder:
    """Stands in for the Celery app's send_task (a stub broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def _call(timeout: float | None) -> StepCall:
    return {
        "path": "a",
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
