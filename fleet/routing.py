"""Send-time routing: a Celery router that asks a routing policy for each step's class.

Celery consults ``task_routes`` every time a task is *sent* -- for a chain step, that is on the
worker, when the previous step finishes -- so each step is placed from the fleet state at that
moment. Signatures never carry a fixed queue (options on a chain reach only its first task).

The decision travels with the message as the header ``fleet_route`` (stamped by a
``before_task_publish`` handler in :mod:`fleet.app`), so the step records in its trace which
class was chosen and why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fleet.config import FleetConfig
from fleet.state import CachedState, FleetState, StateReader

STEP_TASK = "fleet.step"
CONTROL_TASKS = frozenset({"fleet.advance"})


@dataclass(frozen=True)
class RouteRequest:
    task: str
    op: str | None
    kind: str | None
    classes: tuple[str, ...]  # eligible classes, preferred first


@dataclass(frozen=True)
class RouteDecision:
    cls: str
    queue: str
    policy: str
    reason: str
    estimates: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RoutingPolicy(Protocol):
    """Chooses one class among ``req.classes`` from the fleet's state."""

    name: str

    def choose(self, req: RouteRequest, state: FleetState, cfg: FleetConfig) -> RouteDecision: ...


def _decide(cfg: FleetConfig, policy: str, cls: str, reason: str) -> RouteDecision:
    return RouteDecision(cls=cls, queue=cfg.classes[cls].queue_name, policy=policy, reason=reason)


class StaticPolicy:
    """Always the preferred class, live workers or not (what hand-written task_routes do)."""

    name = "static"

    def choose(self, req: RouteRequest, state: FleetState, cfg: FleetConfig) -> RouteDecision:
        return _decide(cfg, self.name, req.classes[0], "preferred class (static)")


class PreferredPolicy:
    """The preferred class if it has live workers, else the next eligible class that does.

    With no live worker in any eligible class the step waits in the preferred queue: Celery
    delivers it once a worker of that class starts (the decision says so in the trace).
    """

    name = "preferred"

    def choose(self, req: RouteRequest, state: FleetState, cfg: FleetConfig) -> RouteDecision:
        preferred = req.classes[0]
        if state.live(preferred):
            return _decide(cfg, self.name, preferred, "preferred class has live workers")
        for cls in req.classes[1:]:
            if state.live(cls):
                return _decide(
                    cfg, self.name, cls, f"fallback: no live worker for preferred '{preferred}'"
                )
        return _decide(
            cfg, self.name, preferred, "no live worker in any eligible class; waiting in queue"
        )


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    "static": StaticPolicy,
    "preferred": PreferredPolicy,
}


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown routing policy '{name}' (known: {', '.join(POLICIES)})"
        ) from None


_last = threading.local()


def take_decision(task_name: str) -> RouteDecision | None:
    """The decision the router just made for ``task_name`` in this thread (consumed once)."""
    pending: tuple[str, RouteDecision] | None = getattr(_last, "decision", None)
    _last.decision = None
    if pending is not None and pending[0] == task_name:
        return pending[1]
    return None


class FleetRouter:
    """A Celery router (``task_routes`` entry) for the fleet's own tasks."""

    def __init__(self, cfg: FleetConfig, state: CachedState | None = None) -> None:
        self.cfg = cfg
        self.policy = make_policy(cfg.policy)
        self._state = state

    @property
    def state(self) -> CachedState:
        if self._state is None:  # created lazily: after fork, in the process that routes
            self._state = CachedState(StateReader(self.cfg), self.cfg.state_ttl)
        return self._state

    def request_for(self, name: str, kwargs: dict[str, Any]) -> RouteRequest | None:
        if name == STEP_TASK:
            call = kwargs.get("call") or {}
            return RouteRequest(name, call.get("op"), call.get("kind"), tuple(call["classes"]))
        if name in CONTROL_TASKS:
            control = self.cfg.control_class
            others = tuple(c for c in self.cfg.classes if c != control)
            return RouteRequest(name, None, None, (control, *others))
        return None

    def __call__(
        self,
        name: str,
        args: Any,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        task: Any = None,
        **kw: Any,
    ) -> dict[str, Any] | None:
        req = self.request_for(name, kwargs or {})
        if req is None or options.get("queue") or options.get("routing_key"):
            return None  # not ours, or an explicit destination (queue=, a retry) wins
        decision = self.policy.choose(req, self.state.get(), self.cfg)
        _last.decision = (name, decision)
        return {"queue": decision.queue}
