"""The autoscaler's rule, look by look: up after two looks over the wait, down after the idle
time, never within the cooldown, never outside min/max_workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet.config import AutoscaleSpec, FleetConfig
from fleet.deploy.autoscale import Autoscaler
from fleet.routing.state import FleetState, WorkerInfo


@dataclass
class StubFleet:
    cfg: FleetConfig
    classes: list[str]
    count: dict[str, int] = field(default_factory=dict)

    def workers_of(self, cls: str) -> list[int]:
        return list(range(self.count.get(cls, 1)))

    def add_worker(self, cls: str) -> None:
        self.count[cls] = self.count.get(cls, 1) + 1

    def remove_worker(self, cls: str) -> object:
        self.count[cls] -= 1
        return object()


@dataclass
class StubReader:
    state: FleetState
    client: Any = None

    def read(self) -> FleetState:
        return self.state


def _state(depth: int, busy: int) -> FleetState:
    worker = WorkerInfo("cpu@h", ("cpu",), 1, "prefork", 1, 0.0, busy)
    return FleetState(workers={"cpu": [worker]}, depth={"cpu": depth}, online={"*|cpu|s": 1.0})


def test_the_rule_look_by_look(cfg: FleetConfig) -> None:
    classes = dict(cfg.classes)
    classes["cpu"] = classes["cpu"].model_copy(update={"concurrency": 1, "max_workers": 2})
    spec = AutoscaleSpec(interval_s=1.0, up_wait_s=2.0, down_idle_s=5.0, cooldown_s=3.0)
    sized = cfg.model_copy(update={"classes": classes, "autoscale": spec})
    fleet = StubFleet(sized, ["cpu"])
    reader = StubReader(_state(depth=5, busy=1))
    scaler = Autoscaler(fleet, say=lambda _: None, reader=reader)  # type: ignore[arg-type]
    scaler._record = lambda change: None  # type: ignore[method-assign]
    assert scaler.step(0.0) == []  # 5 waiting x 1 s / 1 slot: over 2 s, but only once
    assert scaler.step(0.5) == []  # not time to look yet
    (up,) = scaler.step(1.0)
    assert (up.before, up.after) == (1, 2) and "expected wait 5.0 s > 2 s" in up.reason
    assert scaler.step(2.0) == [] and scaler.step(3.0) == []  # at max_workers: no third
    reader.state = _state(depth=0, busy=0)
    assert scaler.step(4.0) == []  # idle from now; 5 s to go
    assert scaler.step(8.0) == []
    (down,) = scaler.step(9.0)
    assert (down.before, down.after) == (2, 1) and "nothing queued" in down.reason
    assert all(scaler.step(t) == [] for t in (10.0, 20.0, 30.0))  # at min_workers
    reader.state = _state(depth=5, busy=1)
    assert scaler.step(31.0) == []  # one look over: not yet
    (again,) = scaler.step(32.0)
    assert again.after == 2
