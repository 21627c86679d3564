"""The autoscaler's rule, look by look: up after two looks over the wait, down after the idle
time, never within the cooldown, never outside min/max_workers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.config import AutoscaleSpec, FleetConfig
from fleet.deploy.autoscale import Autoscaler
from fleet.deploy.local import Child, LocalFleet
from fleet.routing.state import FleetState, WorkerInfo


@dataclass
class StubFleet:
    cfg: FleetConfig
    classes: list[str]
    count: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # no host cut
    bounds = LocalFleet.bounds

    def room(self) -> bool:
        return True

    def ceiling(self) -> str:
        return "none"

    def workers_of(self, cls: str) -> list[int]:
        return list(range(self.count.get(cls, 1)))

    def add_worker(self, cls: str) -> None:
        self.count[cls] = self.count.get(cls, 1) + 1

    def remove_worker(self, cls: str, idle: set[int] | None = None) -> object:
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


class SleepingFleet(LocalFleet):
    """A real local fleet whose worker processes are `sleep`s: its counting, bounds and
    ceiling are the real ones, without starting Celery."""

    def _spawn_worker(self, cls: str, index: int, only: str | None = None) -> Child:
        child = self._spawn(f"worker-{cls}-{index}", ["sleep", "60"], {})
        child.cls, child.index = cls, index
        return child


def _busy_io(depth: int) -> FleetState:
    worker = WorkerInfo("io@h", ("io",), 1, "threads", 1, 0.0, 1)
    return FleetState(workers={"io": [worker]}, depth={"io": depth}, online={"*|io|s": 1.0})


def _sleeping_fleet(cfg: FleetConfig, tmp_path: Path, cpu: int, **io: int) -> SleepingFleet:
    classes = dict(cfg.classes)
    classes["cpu"] = classes["cpu"].model_copy(update={"workers": cpu})
    classes["io"] = classes["io"].model_copy(update={"concurrency": 1, **io})
    spec = AutoscaleSpec(interval_s=1.0, up_wait_s=0.5, down_idle_s=60.0, cooldown_s=0.0)
    sized = cfg.model_copy(update={"classes": classes, "autoscale": spec})
    (tmp_path / "logs").mkdir(exist_ok=True)
    return SleepingFleet(sized, ["cpu", "io"], flower=False, workdir=tmp_path, say=print)


def _scale(fleet: SleepingFleet, looks: int) -> list[tuple[int, int]]:
    """Start the fleet's workers, look ``looks`` times at a deep io queue: (cpu, io) after each."""
    for cls in fleet.classes:
        fleet._start_worker(cls)
    scaler = Autoscaler(fleet, say=fleet.say, reader=StubReader(_busy_io(depth=50)))
    scaler._record = lambda change: None  # type: ignore[method-assign]
    seen = []
    for t in range(looks):
        scaler.step(float(t))
        seen.append((len(fleet.workers_of("cpu")), len(fleet.workers_of("io"))))
    return seen


def test_the_autoscaler_keeps_to_the_cut_up_made_for_the_host(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    # a plan's 2 cpu and 7 io (min_workers 7) on a host of 6 worker processes: 1 cpu, 4 io
    fleet = _sleeping_fleet(cfg, tmp_path, 2, workers=7, min_workers=7, max_workers=7)
    assert fleet.fit_to_host(6) is not None and fleet.counts == {"cpu": 1, "io": 4}
    try:  # below min_workers and a deep queue: io stays at the cut (was: grown to 7)
        assert set(_scale(fleet, 10)) == {(1, 4)} and fleet.bounds("io") == (4, 4)
    finally:
        fleet.stop()


def test_the_autoscaler_grows_a_class_up_to_the_hosts_ceiling(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    fleet = _sleeping_fleet(cfg, tmp_path, 1, workers=1, max_workers=7)
    assert fleet.fit_to_host(3) is None  # 2 processes fit as planned; the host holds 3
    said: list[str] = []
    fleet.say = said.append
    try:  # the queue calls for 7 io workers; the host has room for one more
        assert _scale(fleet, 10)[-1] == (1, 2) and not fleet.room()
        held = [s for s in said if "stays at" in s]  # why, once
        assert held == [f"autoscale: io stays at 2 workers: {fleet.ceiling()}"]
        assert "at most 3 worker processes" in held[0]
    finally:
        fleet.stop()


def test_the_autoscaler_stops_an_idle_worker_and_lets_it_finish_its_step(
    cfg: FleetConfig, tmp_path: Path
) -> None:
    """Down: the worker stopped is one whose heartbeat says it runs nothing, never the
    last-numbered one in the middle of a step; none is stopped while every one is busy; a
    worker stopped is killed only past its class's time limit (was: the last-numbered
    worker, busy or not, killed after a fixed 60 s -- a 90-s step killed 77 s in)."""
    fleet = _sleeping_fleet(cfg, tmp_path, 1, workers=3, max_workers=3)
    classes = dict(fleet.cfg.classes)
    classes["io"] = classes["io"].model_copy(update={"time_limit": 300.0})
    fleet.cfg = fleet.cfg.model_copy(update={"classes": classes})
    for cls in fleet.classes:
        fleet._start_worker(cls)
    try:
        pids = [w.proc.pid for w in fleet.workers_of("io")]
        infos = [
            WorkerInfo(f"io-{i}@h", ("io",), 1, "threads", p, 0.0, 0) for i, p in enumerate(pids)
        ]
        infos[2] = WorkerInfo("io-2@h", ("io",), 1, "threads", pids[2], 0.0, 1)  # runs a step
        idle = FleetState(workers={"io": infos}, depth={"io": 0}, online={"*|io|s": 1.0})
        scaler = Autoscaler(fleet, say=fleet.say, reader=StubReader(idle))
        scaler._record = lambda change: None  # type: ignore[method-assign]
        assert scaler.step(0.0) == []  # idle from now
        (down,) = scaler.step(61.0)
        left = [w.proc.pid for w in fleet.workers_of("io")]
        assert down.after == 2 and pids[2] in left and pids[1] not in left  # the busy one stays
        (stopped,) = [c for c in fleet.stopping if c.proc.pid == pids[1]]
        assert stopped.restart_at - time.monotonic() > 300  # its class's time limit, and more
        busy = [
            WorkerInfo(f"io-{i}@h", ("io",), 1, "threads", p, 0.0, 1) for i, p in enumerate(left)
        ]
        scaler.reader = StubReader(FleetState({"io": busy}, {"io": 0}, {"*|io|s": 1.0}))
        assert all(scaler.step(t) == [] for t in (200.0, 300.0, 400.0))  # all busy: none stops
        assert fleet.remove_worker("io", set()) is None
    finally:
        fleet.stop()
