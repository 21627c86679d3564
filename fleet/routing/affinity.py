"""Prefix affinity: a run's next LLM round goes back to the worker that holds its prefix.

An op that keeps the KV state of the prompts it ran (``prefix_cache=True``: an LLM op's
batch keeps each slot's tokens) makes a run's next step of it cheaper on the same worker: an
agent loop resends the system prompt, the tool schema and the previous round, and only the
new tokens need a prefill there. The step that ran such an op records its worker in the run
(``run["affinity"][op]``, carried by every later step message of the run); when the router
places the run's next step of that op, this module decides whether to send it to that
worker's own queue (Celery's ``worker_direct``) instead of the class queue the policy chose.

It keeps the affinity while the worker is alive, serves one of the step's classes, has at
most ``affinity_queue`` steps to wait for before the step starts there (its heartbeat's busy
count plus what this router sent it since, beyond its slots), and its class's estimate
(where the policy made one) is within ``affinity_slack_s`` of the policy's choice.
Otherwise the policy's decision stands and its reason says why the affinity was dropped.
No Redis: the decision is made from the fleet state the router already holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery.utils.nodenames import WORKER_DIRECT_EXCHANGE
from kombu.entity import Queue

from fleet.config import FleetConfig
from fleet.constants import AFFINITY_FIELD, AMQP_SCHEMES
from fleet.routing.estimate import Estimate, RouteRequest
from fleet.routing.policies import RouteDecision
from fleet.routing.state import FleetState, WorkerInfo

DIRECT_QUEUE = "{worker}.dq2"  # Celery's WORKER_DIRECT_QUEUE_FORMAT


def holder(run: Mapping[str, Any], op: str | None) -> str | None:
    """The worker that ran the run's last step of ``op``, if that op keeps prefixes."""
    held = run.get(AFFINITY_FIELD)
    if not op or not isinstance(held, Mapping):
        return None
    worker = held.get(op)
    return str(worker) if worker else None


def remember(run: dict[str, Any], op: str, worker: str) -> dict[str, Any]:
    """The run as its next steps carry it: ``worker`` now holds the prefix of ``op``."""
    held = run.get(AFFINITY_FIELD)
    return {**run, AFFINITY_FIELD: {**(held if isinstance(held, dict) else {}), op: worker}}


def forget(run: dict[str, Any], worker: str) -> dict[str, Any]:
    """The run without any affinity to ``worker`` (it is gone)."""
    held = run.get(AFFINITY_FIELD)
    if not isinstance(held, dict):
        return run
    return {**run, AFFINITY_FIELD: {op: w for op, w in held.items() if w != worker}}


def direct_queue(cfg: FleetConfig, worker: str) -> Queue:
    """``worker``'s own queue, declared as the worker declares it (Celery's worker_direct;
    on RabbitMQ with priorities, with the same x-max-priority, or the broker refuses it)."""
    name = DIRECT_QUEUE.format(worker=worker)
    priorities = cfg.broker_url.startswith(AMQP_SCHEMES) and cfg.amqp_queues != "quorum"
    arguments = {"x-max-priority": 9} if priorities else None
    return Queue(name, WORKER_DIRECT_EXCHANGE, worker, queue_arguments=arguments)  # type: ignore[no-untyped-call]


def find(state: FleetState, hostname: str) -> WorkerInfo | None:
    for workers in state.workers.values():
        for worker in workers:
            if worker.hostname == hostname:
                return worker
    return None


def apply(
    req: RouteRequest,
    decision: RouteDecision,
    host: str,
    state: FleetState,
    cfg: FleetConfig,
    sent_here: int = 0,
) -> RouteDecision:
    """``decision`` sent to ``host``'s own queue when the affinity holds, else ``decision``
    with why it was dropped added to its reason. ``sent_here``: steps this router sent to
    ``host`` since ``state`` was read (the heartbeat does not count them yet)."""
    if not cfg.prefix_affinity or decision.fail or state.stale:
        return decision
    worker = find(state, host)
    if worker is None:
        return _dropped(decision, f"{host} is gone")
    cls = next((c for c in req.classes if c in worker.classes), None)
    if cls is None:
        return _dropped(decision, f"{host} serves none of the step's classes")
    load = worker.busy + sent_here
    ahead = max(0, load - worker.concurrency + 1)  # steps that must finish before it starts
    if ahead > cfg.affinity_queue:
        return _dropped(
            decision, f"{host} has {load} steps on {worker.concurrency} slots ({ahead} to wait for)"
        )
    mine, best = decision.estimates.get(cls), decision.estimates.get(decision.cls)
    if isinstance(mine, Estimate) and isinstance(best, Estimate):
        later = mine.total_s - best.total_s
        if later > cfg.affinity_slack_s:
            return _dropped(decision, f"{cls} is estimated {later:.2f}s later than {decision.cls}")
    why = (
        f"prefix affinity: {host} holds this run's prefix ({load} steps on "
        f"{worker.concurrency} slots); the policy chose {decision.cls}: {decision.reason}"
    )
    queue = DIRECT_QUEUE.format(worker=host)
    return replace(decision, cls=cls, queue=queue, reason=why, worker=host)


def _dropped(decision: RouteDecision, why: str) -> RouteDecision:
    return replace(decision, reason=f"{decision.reason}; prefix affinity dropped: {why}")
