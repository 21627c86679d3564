"""Routing policies: which eligible class a step goes to, from its profile and the fleet.

Every policy sees the same estimate per eligible class (see :func:`estimate`)::

    completion = queue wait + service time + data movement
    queue wait = max(0, backlog - slots + 1) * mean service time on the class / slots, or the
                 wait this process expects from the steps it sent itself, if longer
    service    = profile(op, class).predict(units) * online correction   (or the online
                 average, or default_service_s when the op was never seen on that class)
    movement   = input bytes / class bandwidth + class latency
    cost       = class price per hour * service time

- ``static``: the preferred class, always (what hand-written ``task_routes`` do);
- ``preferred``: the preferred class if it has live workers, else the next that has;
- ``least-latency``: the smallest expected completion;
- ``cost-sla``: the cheapest class whose expected completion fits this step's share of the
  run's remaining SLA; when none fits (the cheap class backed up), the fastest.

A step is only ever routed to a class in its eligible list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fleet.config import FleetConfig
from fleet.profiles import ProfileStore
from fleet.state import FleetState


@dataclass(frozen=True)
class RouteRequest:
    task: str
    op: str | None
    kind: str | None
    classes: tuple[str, ...]  # eligible classes, preferred first
    units: float = 1.0
    input_bytes: int = 0
    sla_left_s: float | None = None  # what is left of the run's latency SLA
    remaining_steps: int = 1  # steps still to run in the workflow, this one included


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


@dataclass(frozen=True)
class Estimate:
    cls: str
    live: bool
    wait_s: float
    service_s: float
    move_s: float
    cost: float
    source: str  # where service_s came from: profile, online, default

    @property
    def total_s(self) -> float:
        return self.wait_s + self.service_s + self.move_s

    def brief(self) -> dict[str, Any]:
        """JSON-safe figures for the trace (an infinite wait becomes null)."""
        return {
            "wait_s": _finite(self.wait_s),
            "service_s": _finite(self.service_s),
            "move_s": _finite(self.move_s),
            "total_s": _finite(self.total_s),
            "cost": round(self.cost, 8),
            "source": self.source,
            "live": self.live,
        }


@dataclass(frozen=True)
class RouteDecision:
    cls: str
    queue: str
    policy: str
    reason: str
    estimates: dict[str, Any] = field(default_factory=dict)
    fail: str | None = None  # set when the run must fail instead (no_worker = fail)
    decide_us: float | None = None  # how long the decision took (state lookup included)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def service_time(
    req: RouteRequest, cls: str, state: FleetState, store: ProfileStore, cfg: FleetConfig
) -> tuple[float, str]:
    op = req.op or ""
    profile = store.get(op, cls)
    if profile is not None:
        ratio = state.online.get(f"{op}|{cls}|ratio", 1.0)
        return profile.predict(req.units) * ratio, "profile"
    seen = state.online.get(f"{op}|{cls}|s")
    if seen is not None:
        return seen, "online"
    return cfg.default_service_s, "default"


def estimate(
    req: RouteRequest, cls: str, state: FleetState, store: ProfileStore, cfg: FleetConfig
) -> Estimate:
    spec = cfg.classes[cls]
    service, source = service_time(req, cls, state, store, cfg)
    slots = state.slots(cls)
    if slots == 0:
        wait = math.inf
    else:
        mean = state.online.get(f"*|{cls}|s", service)
        wait = max(0, state.backlog(cls) - slots + 1) * mean / slots
        wait = max(wait, state.local_wait_s.get(cls, 0.0))
    move = req.input_bytes / (spec.network_mb_s * 1e6) + spec.latency_s
    cost = spec.price_per_hour / 3600.0 * service
    return Estimate(cls, slots > 0, wait, service, move, cost, source)


class RoutingPolicy(Protocol):
    name: str

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision: ...


def decide(cfg: FleetConfig, policy: str, cls: str, reason: str, **extra: Any) -> RouteDecision:
    return RouteDecision(cls, cfg.classes[cls].queue_name, policy, reason, **extra)


def no_live_worker(req: RouteRequest, cfg: FleetConfig, policy: str) -> RouteDecision:
    """What to do when no eligible class has a live worker (``no_worker`` setting)."""
    preferred = req.classes[0]
    if cfg.no_worker == "fail":
        why = f"no live worker in any class that can run {req.op} ({', '.join(req.classes)})"
        return decide(cfg, policy, preferred, why, fail=why)
    return decide(cfg, policy, preferred, "no live worker in any eligible class; waiting in queue")


class StaticPolicy:
    name = "static"

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision:
        return decide(cfg, self.name, req.classes[0], "preferred class (static)")


class PreferredPolicy:
    name = "preferred"

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision:
        preferred = req.classes[0]
        if state.live(preferred):
            return decide(cfg, self.name, preferred, "preferred class has live workers")
        if cfg.no_worker == "wait":
            return decide(cfg, self.name, preferred, "preferred class has no live worker; waiting")
        for cls in req.classes[1:]:
            if state.live(cls):
                why = f"fallback: no live worker for preferred '{preferred}'"
                return decide(cfg, self.name, cls, why)
        return no_live_worker(req, cfg, self.name)


class _Estimating:
    """Shared by the policies that compare classes by their estimates."""

    name = ""

    def candidates(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> tuple[list[Estimate], dict[str, Any]]:
        all_est = [estimate(req, c, state, store, cfg) for c in req.classes]
        shown = {e.cls: e.brief() for e in all_est}
        if cfg.no_worker == "wait" and not all_est[0].live:
            return [], shown
        return [e for e in all_est if e.live], shown

    def pick(
        self, req: RouteRequest, live: list[Estimate], shown: dict[str, Any], cfg: FleetConfig
    ) -> RouteDecision:
        raise NotImplementedError

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision:
        live, shown = self.candidates(req, state, cfg, store)
        if not live:
            d = no_live_worker(req, cfg, self.name)
            return RouteDecision(d.cls, d.queue, d.policy, d.reason, shown, d.fail)
        return self.pick(req, live, shown, cfg)


class LeastLatencyPolicy(_Estimating):
    name = "least-latency"

    def pick(
        self, req: RouteRequest, live: list[Estimate], shown: dict[str, Any], cfg: FleetConfig
    ) -> RouteDecision:
        best = min(live, key=lambda e: e.total_s)  # ties: the earlier (more preferred) class
        why = f"least expected completion {best.total_s:.3f}s ({best.source} service time)"
        return decide(cfg, self.name, best.cls, why, estimates=shown)


class CostSlaPolicy(_Estimating):
    name = "cost-sla"

    def pick(
        self, req: RouteRequest, live: list[Estimate], shown: dict[str, Any], cfg: FleetConfig
    ) -> RouteDecision:
        left = req.sla_left_s if req.sla_left_s is not None else cfg.default_sla_s
        budget = max(0.0, left) / max(1, req.remaining_steps)
        shown = {**shown, "budget_s": round(budget, 4)}
        for est in sorted(live, key=lambda e: e.cost):  # stable: ties keep preference order
            if est.total_s <= budget:
                why = f"cheapest class within the step budget {budget:.3f}s"
                return decide(cfg, self.name, est.cls, why, estimates=shown)
        fastest = min(live, key=lambda e: e.total_s)
        why = f"spill: no class fits the step budget {budget:.3f}s; fastest instead"
        return decide(cfg, self.name, fastest.cls, why, estimates=shown)


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    "static": StaticPolicy,
    "preferred": PreferredPolicy,
    "least-latency": LeastLatencyPolicy,
    "cost-sla": CostSlaPolicy,
}


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown routing policy '{name}' (known: {', '.join(POLICIES)})"
        ) from None
