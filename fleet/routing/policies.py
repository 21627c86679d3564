"""Routing policies: which eligible class a step goes to, from its profile and the fleet.

Every policy sees the same estimate per eligible class -- expected completion (queue wait,
service time, data movement, cold start) and cost -- computed as :mod:`fleet.routing.estimate`
describes. The policies:

- ``static``: the preferred class, always (what hand-written ``task_routes`` do);
- ``preferred``: the preferred class if it has live workers, else the next that has;
- ``least-latency``: the smallest expected completion;
- ``cost-sla``: the cheapest class whose expected completion fits this step's share of the
  run's remaining SLA; when none fits (the cheap class backed up), the fastest.

With a plan (the configuration's ``routes`` and ``budgets``, written by ``fleet plan``),
every policy follows it while the fleet behaves as planned: ``static`` always; ``preferred``
while the planned class has live workers; ``least-latency`` and ``cost-sla`` while the
planned class is expected within the node's planned budget -- past it, they spill as above.

A step is only ever routed to a class in its eligible list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.config import FleetConfig
from fleet.routing.estimate import (
    Estimate,
    RouteRequest,
    cached_models,
    class_model,
    estimate_with,
)
from fleet.routing.profiles import ProfileStore
from fleet.routing.state import FleetState


@dataclass(slots=True)
class RouteDecision:
    cls: str
    queue: str
    policy: str
    reason: str
    # Estimate per class (plus cost-sla's "budget_s"); made JSON-safe only by to_dict(), when
    # the decision is stamped on its message, so that choosing stays cheap.
    estimates: dict[str, Any] = field(default_factory=dict)
    fail: str | None = None  # set when the run must fail instead (no_worker = fail)
    decide_us: float | None = None  # how long the decision took (state lookup included)
    # the one worker whose direct queue it goes to (prefix affinity), None: the class queue
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        shown = {
            k: v.brief() if isinstance(v, Estimate) else round(v, 4) if isinstance(v, float) else v
            for k, v in self.estimates.items()
        }
        return {
            "cls": self.cls,
            "queue": self.queue,
            "policy": self.policy,
            "reason": self.reason,
            "estimates": shown,
            "fail": self.fail,
            "decide_us": self.decide_us,
            **({"worker": self.worker} if self.worker else {}),
        }


class RoutingPolicy(Protocol):
    name: str

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision: ...


def routed(cfg: FleetConfig, policy: str, cls: str, reason: str, **extra: Any) -> RouteDecision:
    """The record of a route a policy chose: the class, its queue, the policy and why."""
    return RouteDecision(cls, cfg.classes[cls].queue_name, policy, reason, **extra)


def no_live_worker(req: RouteRequest, cfg: FleetConfig, policy: str) -> RouteDecision:
    """What to do when no eligible class has a live worker (``no_worker`` setting)."""
    preferred = req.classes[0]
    if cfg.no_worker == "fail":
        why = f"no live worker in any class that can run {req.op} ({', '.join(req.classes)})"
        return routed(cfg, policy, preferred, why, fail=why)
    return routed(cfg, policy, preferred, "no live worker in any eligible class; waiting in queue")


_INDEXES = re.compile(r"#\d+|\[\d+\]")


def route_key(req: RouteRequest) -> str:
    """``workflow:node`` as a plan names it: the node path without loop or map indexes."""
    return f"{req.workflow}:{_INDEXES.sub('', req.path or '')}"


def planned_class(req: RouteRequest, cfg: FleetConfig) -> str | None:
    """The class a plan's placement (``routes``) names for this node, or its op, when the
    node may run there (a route never crosses a constraint); None without one."""
    if not cfg.routes:
        return None
    planned = cfg.routes.get(route_key(req)) or cfg.routes.get(req.op or "")
    return planned if planned in req.classes else None


PLANNED = "planned placement (routes)"


class StaticPolicy:
    """The preferred class -- or, where ``routes`` (a plan's placement) names one for this
    node or op, that class, if it is eligible (a constraint is never crossed)."""

    name = "static"

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision:
        planned = planned_class(req, cfg)
        if planned is not None:
            return routed(cfg, self.name, planned, PLANNED)
        return routed(cfg, self.name, req.classes[0], "preferred class (static)")


class PreferredPolicy:
    """The planned class (``routes``), else the preferred one, while it has live workers;
    else the next eligible class that has."""

    name = "preferred"

    def choose(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> RouteDecision:
        planned = planned_class(req, cfg)
        if planned is not None and state.live(planned):
            return routed(cfg, self.name, planned, f"{PLANNED}, live workers")
        preferred = req.classes[0]
        if state.live(preferred):
            return routed(cfg, self.name, preferred, "preferred class has live workers")
        if cfg.no_worker == "wait":
            return routed(cfg, self.name, preferred, "preferred class has no live worker; waiting")
        for cls in req.classes[1:]:
            if state.live(cls):
                why = f"fallback: no live worker for preferred '{preferred}'"
                return routed(cfg, self.name, cls, why)
        return no_live_worker(req, cfg, self.name)


class _EstimatingPolicy:
    """Shared by the policies that compare classes by their estimates."""

    name = ""

    def candidates(
        self, req: RouteRequest, state: FleetState, cfg: FleetConfig, store: ProfileStore
    ) -> tuple[list[Estimate], dict[str, Any]]:
        shown: dict[str, Any] = {}
        live = []
        now, op, models = time.time(), req.op or "", cached_models(state, store)
        for cls in req.classes:
            m = models.get((op, cls)) or class_model(op, cls, state, store, cfg)
            est = shown[cls] = estimate_with(req, cls, m, state, now)
            if est.live:
                live.append(est)
        if cfg.no_worker == "wait" and not shown[req.classes[0]].live:
            return [], shown
        return live, shown

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


def _on_plan(req: RouteRequest, live: list[Estimate], cfg: FleetConfig) -> Estimate | None:
    """The planned class's estimate when it is live and expected within the node's planned
    budget (any time, without one): the plan holds while the fleet behaves as planned."""
    planned = planned_class(req, cfg)
    est = next((e for e in live if e.cls == planned), None)
    budget = cfg.budgets.get(route_key(req)) if cfg.budgets else None
    if est is None or (budget is not None and est.total_s > budget):
        return None
    return est


class LeastLatencyPolicy(_EstimatingPolicy):
    """The planned class while it keeps the node's planned budget; else (no plan, or the
    planned class is late) the smallest expected completion."""

    name = "least-latency"

    def pick(
        self, req: RouteRequest, live: list[Estimate], shown: dict[str, Any], cfg: FleetConfig
    ) -> RouteDecision:
        on_plan = _on_plan(req, live, cfg)
        if on_plan is not None:
            why = f"{PLANNED}: expected {on_plan.total_s:.3f}s, within its budget"
            return routed(cfg, self.name, on_plan.cls, why, estimates=shown)
        best = min(live, key=lambda e: e.total_s)  # ties: the earlier (more preferred) class
        why = f"least expected completion {best.total_s:.3f}s ({best.source} service time)"
        return routed(cfg, self.name, best.cls, why + _cold_note(live), estimates=shown)


def _cold_note(live: list[Estimate]) -> str:
    """The cold starts counted in the estimates, for the reason: "" when none."""
    cold = [f"{e.cls} +{e.cold_s:.2f}s" for e in live if e.cold_s > 0]
    return f"; cold start counted: {', '.join(cold)}" if cold else ""


def _cost(est: Estimate) -> float:
    return est.cost


class CostSlaPolicy(_EstimatingPolicy):
    name = "cost-sla"

    def pick(
        self, req: RouteRequest, live: list[Estimate], shown: dict[str, Any], cfg: FleetConfig
    ) -> RouteDecision:
        left = req.sla_left_s if req.sla_left_s is not None else cfg.default_sla_s
        budget = max(0.0, left) / max(1, req.remaining_steps)
        planned = cfg.budgets.get(route_key(req)) if cfg.budgets else None
        if planned is not None:  # the plan's share of the SLA for this node
            budget = min(planned, max(0.0, left))
        shown["budget_s"] = budget  # shown is this decision's own dict
        on_plan = _on_plan(req, live, cfg)
        if on_plan is not None and on_plan.total_s <= budget:
            why = f"{PLANNED}: within the budget {budget:.3f}s"
            return routed(cfg, self.name, on_plan.cls, why, estimates=shown)
        fits = [e for e in live if e.total_s <= budget]
        if fits:
            cheapest = min(fits, key=_cost)  # ties: the earlier (more preferred) class
            kind = "planned" if planned is not None else "step"
            why = f"cheapest class within the {kind} budget {budget:.3f}s" + _cold_note(live)
            return routed(cfg, self.name, cheapest.cls, why, estimates=shown)
        fastest = min(live, key=lambda e: e.total_s)
        why = f"spill: no class fits the step budget {budget:.3f}s; fastest instead"
        return routed(cfg, self.name, fastest.cls, why, estimates=shown)


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
