"""Send-time routing: a Celery router that asks a routing policy for each step's class.

Celery consults ``task_routes`` every time a task is *sent* -- for a chain step, that is on the
worker, when the previous step finishes -- so each step is placed from the fleet state at that
moment. Signatures never carry a fixed queue (options on a chain reach only its first task).

The decision travels with the message as the header ``fleet_route`` (stamped by a
``before_task_publish`` handler in :mod:`fleet.messaging.app`), so the step records in its
trace which class was chosen, why, and the estimates behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fleet.config import FleetConfig
from fleet.constants import CELERY_OP_PREFIX, NODE_TASK, STEP_TASK
from fleet.engine.publishing import is_preparing
from fleet.engine.readiness import StepCall
from fleet.errors import Unroutable
from fleet.routing import affinity
from fleet.routing.estimate import Estimate, RouteRequest
from fleet.routing.policies import RouteDecision, RoutingPolicy, StaticPolicy, make_policy
from fleet.routing.profiles import current_store
from fleet.routing.state import CachedState, FleetState, StateReader
from fleet.sdk.registry import registry

log = logging.getLogger("fleet.routing.router")

_last = threading.local()
STEPS = (STEP_TASK, NODE_TASK)  # a step of a run, or an op node of a canvas


def take_decision(task_name: str) -> RouteDecision | None:
    """The decision the router just made for ``task_name`` in this thread (consumed once)."""
    pending: tuple[str, RouteDecision] | None = getattr(_last, "decision", None)
    _last.decision = None
    if pending is not None and pending[0] == task_name:
        return pending[1]
    return None


def step_request(name: str, call: StepCall, run: dict[str, Any]) -> RouteRequest:
    """What the policy needs to know about one step, from its message."""
    args = call.get("args") or {}
    units = registry.units_of(call["op"], args)
    sla_left = None
    if run.get("sla_s") and run.get("submitted_at"):
        sla_left = float(run["sla_s"]) - (time.time() - float(run["submitted_at"]))
    return RouteRequest(
        name,
        call["op"],
        call["kind"],
        tuple(call["classes"]),
        units=units,
        args=args,
        sla_left_s=sla_left,
        remaining_steps=int(call.get("remaining", 1) or 1),
        workflow=run.get("workflow"),
        path=call.get("path"),
    )


def with_task(req: RouteRequest, state: FleetState) -> RouteRequest:
    """A `celery:` step goes only to the classes some live worker of which has its task
    registered; Unroutable when a class is live but none of its workers has it (while no
    class is live, it waits like any step). The submit check read the same announcements."""
    task = (req.op or "")[len(CELERY_OP_PREFIX) :]
    have = tuple(c for c in req.classes if any(task in w.tasks for w in state.workers.get(c, ())))
    if have:
        return replace(req, classes=have)
    if state.stale or not any(state.live(c) for c in req.classes):
        return req
    raise Unroutable(
        f"node '{req.path}' ({req.op}): no live worker of class(es) {', '.join(req.classes)} "
        f"has the Celery task '{task}' registered (task_modules in the workers' configuration)"
    )


class FleetRouter:
    """A Celery router (``task_routes`` entry) for the fleet's own tasks."""

    def __init__(
        self,
        cfg: FleetConfig,
        state: CachedState | None = None,
        on_fail: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # Called (run id, node, why) when a policy fails a run (no_worker = "fail"); the
        # runtime passes the run store's fail, so this layer needs no Redis of its own.
        self.on_fail = on_fail
        self.policy = make_policy(cfg.policy)
        self._policies: dict[str, RoutingPolicy] = {cfg.policy: self.policy}
        self._state = state
        # When each worker slot of a class frees up, by this process's own sends since the
        # last state snapshot (later snapshots count them as queued or busy): without it, a
        # burst sent within one snapshot would all pile onto the class that looked best.
        self._free_at: dict[str, list[float]] = {}
        # Steps sent to each worker's own queue (prefix affinity) since the last snapshot.
        self._sent_to: dict[str, int] = {}
        self._snapshot: FleetState | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> CachedState:
        if self._state is None:  # created lazily: after fork, in the process that routes
            self._state = CachedState(StateReader(self.cfg), self.cfg.state_ttl)
        return self._state

    def policy_for(self, name: str | None) -> RoutingPolicy:
        if not name:
            return self.policy
        if name not in self._policies:
            self._policies[name] = make_policy(name)
        return self._policies[name]

    def request_for(self, name: str, args: Any, kwargs: dict[str, Any]) -> RouteRequest | None:
        if name in STEPS and "call" in kwargs:
            return step_request(name, kwargs["call"], kwargs.get("run") or {})
        return None

    def current_state(self) -> FleetState:
        state = self.state.get()
        if state is not self._snapshot:
            with self._lock:
                if state is not self._snapshot:
                    # A new snapshot counts this process's earlier sends as queued or busy.
                    self._snapshot, self._free_at, self._sent_to = state, {}, {}
                    state.local_free_at.clear()
        return state

    def _account(self, decision: RouteDecision, state: FleetState) -> None:
        """Book the chosen step on the slot of its class that frees up first."""
        est = decision.estimates.get(decision.cls)
        service = est.service_s if isinstance(est, Estimate) else self.cfg.default_service_s
        slots = max(1, state.slots(decision.cls))
        now = time.time()
        with self._lock:
            if decision.worker:
                self._sent_to[decision.worker] = self._sent_to.get(decision.worker, 0) + 1
            times = self._free_at.setdefault(decision.cls, [])
            if len(times) != slots:
                times[:] = (times + [now] * slots)[:slots]
            first = min(times)
            i = times.index(first)
            times[i] = (now if now > first else first) + float(service)
            state.local_free_at[decision.cls] = min(times)

    def choose(self, req: RouteRequest, state: FleetState, policy: str | None) -> RouteDecision:
        chosen = self.policy_for(policy) if req.task in STEPS else self.policy_for("preferred")
        age = time.time() - state.fetched_at
        if state.stale and age > self.cfg.stale_after_s and chosen.name != "static":
            d = StaticPolicy().choose(req, state, self.cfg, current_store())
            why = f"fleet state is {age:.0f}s old (backend unreachable): preferred class"
            return RouteDecision(d.cls, d.queue, chosen.name, why)
        return chosen.choose(req, state, self.cfg, current_store())

    def __call__(
        self,
        name: str,
        args: Any,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        task: Any = None,
        **kw: Any,
    ) -> dict[str, Any] | None:
        kwargs = kwargs or {}
        req = self.request_for(name, args, kwargs)
        if req is None or options.get("queue") or options.get("routing_key"):
            return None  # not ours, or an explicit destination (queue=, a retry) wins
        if not req.classes:  # a policy chooses among them: none is no choice (IndexError)
            raise Unroutable(f"node '{req.path}' (op {req.op}): no eligible class")
        run = kwargs.get("run") or {}
        start = time.perf_counter()
        state = self.current_state()
        if req.op and req.op.startswith(CELERY_OP_PREFIX):
            req = with_task(req, state)
        decision = self.choose(req, state, run.get("policy"))
        decision.decide_us = round((time.perf_counter() - start) * 1e6, 1)
        rule = kwargs.get("call", {}).get("rule")
        if rule and req.task in STEPS:  # what the policy chose among, and why only those
            decision = replace(decision, reason=f"{decision.reason}; {rule}")
        runtime = kwargs.get("call", {}).get("runtime")
        spec = self.cfg.classes.get(decision.cls)
        lane = spec.queue_for(runtime) if spec is not None else decision.queue
        if lane != decision.queue:  # a GPU class's lane for the op's runtime
            decision = replace(decision, queue=lane)
        host = affinity.holder(run, req.op) if req.task == STEP_TASK else None
        if host:  # the worker that holds this run's prefix for the op, if it has room
            sent = self._sent_to.get(host, 0)
            decision = affinity.apply(req, decision, host, state, self.cfg, sent)
        if decision.fail and is_preparing():
            # a message built to be sent later (Publisher.prepare), perhaps for a run not yet
            # recorded: it is not sent; sent as always, it fails the run then
            raise Unroutable(decision.fail)
        if req.task in STEPS:
            self._account(decision, state)
        if decision.fail and run.get("id"):
            self._fail_run(run["id"], kwargs.get("call", {}).get("path"), decision.fail)
        _last.decision = (name, decision)
        if decision.worker:  # that worker's own queue (Celery's worker_direct)
            return {"queue": affinity.direct_queue(self.cfg, decision.worker)}
        return {"queue": decision.queue}

    def _fail_run(self, run_id: str, node: str | None, why: str) -> None:
        log.warning("run %s: %s", run_id, why)
        if self.on_fail is not None:
            self.on_fail(run_id, node, why)
