"""Resize a local fleet's classes from their queues: ``fleet up --autoscale``.

Every ``interval_s`` the controller reads the fleet state (queue depth, busy steps, the moving
average of step time per class) and, per class, within ``min_workers``..``max_workers`` and
within what this host holds (``LocalFleet.bounds`` and ``room``: the cut ``fleet up`` made to
two worker processes per core):

- **up** one worker when the expected queue wait -- steps waiting (queued, or prefetched by a
  worker beyond its slots) x mean step time / slots -- is over ``up_wait_s`` at two looks in
  a row (one burst that the workers clear at once does not count);
- **down** one worker when the class had nothing queued and at least a worker's worth of idle
  slots for ``down_idle_s`` (the worker stops warm: it finishes what it runs);
- never two changes of one class within ``cooldown_s``: the hysteresis that keeps it from
  flapping while a new worker starts or a queue drains.

Each change is said (logged) with its reason and recorded in Redis (``fleet:autoscale``:
class -> workers, changes up and down, the last reason), which ``fleet metrics`` exports as
``fleet_autoscale_workers`` and ``fleet_autoscale_changes_total{direction}``. A plan's
``workers`` is where a class starts; on Kubernetes the same rule is the deployment's
autoscaler (docs/operations.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis

from fleet.config import FleetConfig
from fleet.constants import AUTOSCALE_KEY
from fleet.deploy.local import LocalFleet, Say
from fleet.routing.state import FleetState, StateReader

UP_LOOKS = 2  # looks in a row over up_wait_s before a worker is added


@dataclass(frozen=True)
class Change:
    cls: str
    before: int
    after: int
    reason: str

    def __str__(self) -> str:
        return f"autoscale: {self.cls} {self.before} -> {self.after} workers: {self.reason}"


@dataclass
class Autoscaler:
    fleet: LocalFleet
    say: Say = print
    reader: StateReader | None = None
    next_at: float = 0.0
    pressure: dict[str, int] = field(default_factory=dict)  # looks in a row over up_wait_s
    idle_since: dict[str, float] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # classes said to be held at the ceiling

    @property
    def cfg(self) -> FleetConfig:
        return self.fleet.cfg

    def step(self, now: float | None = None) -> list[Change]:
        """Look once if it is time; make at most one change per class. The changes made."""
        now = time.monotonic() if now is None else now
        if now < self.next_at:
            return []
        self.next_at = now + self.cfg.autoscale.interval_s
        if self.reader is None:
            self.reader = StateReader(self.cfg)
        try:
            state = self.reader.read()
        except redis.RedisError as exc:  # the broker is away: change nothing
            self.say(f"autoscale: cannot read the fleet state ({exc}); no change")
            return []
        changes = [c for cls in self.fleet.classes if (c := self._look(cls, state, now))]
        for change in changes:
            self.say(str(change))
            self._record(change)
        return changes

    def _look(self, cls: str, state: FleetState, now: float) -> Change | None:
        spec, auto = self.cfg.classes[cls], self.cfg.autoscale
        n = len(self.fleet.workers_of(cls))
        low, high = self.fleet.bounds(cls)  # within the host's ceiling (`up --plan`)
        slots = n * spec.concurrency
        depth, busy = state.depth.get(cls, 0), state.busy(cls)
        step_s = state.online.get(f"*|{cls}|s") or self.cfg.default_service_s
        # waiting: in the queue, and taken by a worker (prefetched) beyond its slots
        queued = depth + max(0, busy - slots)
        wait = queued * step_s / max(1, slots)
        self.pressure[cls] = self.pressure.get(cls, 0) + 1 if wait > auto.up_wait_s else 0
        if depth == 0 and busy <= slots - spec.concurrency:
            self.idle_since.setdefault(cls, now)
        else:
            self.idle_since.pop(cls, None)
        if now - self.changed_at.get(cls, -1e18) < auto.cooldown_s:
            return None
        wants = n < low or (self.pressure[cls] >= UP_LOOKS and n < high)
        if wants and not self.fleet.room():
            if cls not in self.held:  # said once, not at every look
                self.say(f"autoscale: {cls} stays at {n} workers: {self.fleet.ceiling()}")
                self.held.add(cls)
            return None
        self.held.discard(cls)
        if n < low:
            return self._grow(cls, n, f"below min_workers ({low})", now)
        if self.pressure[cls] >= UP_LOOKS and n < high:
            why = (
                f"{queued} waiting x {step_s:.2f} s / {slots} slots: expected wait {wait:.1f} s "
                f"> {auto.up_wait_s:g} s"
            )
            return self._grow(cls, n, why, now)
        idle = now - self.idle_since.get(cls, now)
        if n > low and idle >= auto.down_idle_s:
            why = f"nothing queued, {busy} of {slots} slots busy for {idle:.0f} s"
            # one whose heartbeats say it runs nothing: never a worker in the middle of a step
            idle_pids = {w.pid for w in state.workers.get(cls, []) if w.busy == 0}
            if self.fleet.remove_worker(cls, idle_pids) is not None:
                return self._changed(cls, n, n - 1, why, now)
        return None

    def _grow(self, cls: str, n: int, why: str, now: float) -> Change:
        self.fleet.add_worker(cls)
        return self._changed(cls, n, n + 1, why, now)

    def _changed(self, cls: str, before: int, after: int, why: str, now: float) -> Change:
        self.changed_at[cls] = now
        self.pressure[cls] = 0
        self.idle_since.pop(cls, None)
        return Change(cls, before, after, why)

    def _record(self, change: Change) -> None:
        """What ``fleet metrics`` exports: workers now, changes so far, the last reason."""
        assert self.reader is not None
        client = self.reader.client
        try:
            raw = client.hget(AUTOSCALE_KEY, change.cls)
            doc = json.loads(raw) if raw else {"up": 0, "down": 0}
            doc["up" if change.after > change.before else "down"] += 1
            doc.update(workers=change.after, reason=change.reason, at=time.time())
            client.hset(AUTOSCALE_KEY, change.cls, json.dumps(doc))
        except redis.RedisError as exc:
            self.say(f"autoscale: could not record the change ({exc})")
