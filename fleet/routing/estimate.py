"""The cost estimator routing and the simulator share: what a step would take on a class.

Every policy (:mod:`fleet.routing.policies`) sees the same estimate per eligible class::

    completion = queue wait + service time + data movement
    queue wait = when the step starts, first come first served, behind the queued steps (the
                 class's mean step time each) and the running ones (half done, on average):
                 rounds of (queued // slots) mean times, plus half a mean time when its turn
                 falls to a running step's slot; or the wait this process expects from the
                 steps it sent itself, if longer
    service    = profile(op, class).predict(units) * online correction   (or the online
                 average, or default_service_s when the op was never seen on that class);
                 on a batching class (a thread pool on an accelerator) at the occupancy the
                 step would join: k steps sharing a process each take k / speedup(k) as long
                 (the profile's measured ``batch``; not measured, a model op takes turns)
    movement   = input bytes / class bandwidth + class latency
    cost       = class price per hour * service time, plus on an endpoint class its tokens:
                 units (completion tokens) * price out + input bytes / 4 * price in
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from fleet.config import FleetConfig
from fleet.routing.profiles import ProfileStore, shared_time
from fleet.routing.state import FleetState

_ENCODER = json.JSONEncoder(default=str)  # one encoder: json.dumps(default=) builds one a call


def _json_size(args: dict[str, Any]) -> int:
    """About the size of ``args`` as JSON: strings and numbers counted directly (the common
    case, and the cheap one), containers encoded."""
    size = 2
    for key, value in args.items():
        size += len(key) + 4
        if isinstance(value, str):
            size += len(value) + 2
        elif isinstance(value, bool | int | float) or value is None:
            size += 8
        else:  # routing must not fail on odd inputs: the step reports them itself
            with contextlib.suppress(TypeError, ValueError):
                size += len(_ENCODER.encode(value))
    return size


@dataclass(slots=True)  # one per step sent: slots keep its creation cheap
class RouteRequest:
    task: str
    op: str | None
    kind: str | None
    classes: tuple[str, ...]  # eligible classes, preferred first
    units: float = 1.0
    input_bytes: int | None = None  # None: measured from ``args`` when a policy asks
    sla_left_s: float | None = None  # what is left of the run's latency SLA
    remaining_steps: int = 1  # steps still to run in the workflow, this one included
    workflow: str | None = None
    path: str | None = None  # the node's path in the run (tools#2/call, summaries[3])
    args: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        """Bytes of input to move (JSON), measured once and only by policies that price it."""
        if self.input_bytes is None:
            self.input_bytes = _json_size(self.args) if self.args else 0  # measured once
        return self.input_bytes


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


@dataclass(slots=True)  # made three times a decision: a frozen dataclass's init costs more
class Estimate:
    cls: str
    live: bool
    wait_s: float
    service_s: float
    move_s: float
    cost: float
    source: str  # where service_s came from: profile, online, default
    occupancy: int = 1  # steps sharing the process the step would join, itself included
    # the cold start it may wait for: the share of the class's processes that have not run
    # the op yet x what a first step takes beyond the service time (FleetState.cold_start)
    cold_s: float = 0.0
    total_s: float = 0.0  # wait + service + movement + cold start (by __post_init__)

    def __post_init__(self) -> None:
        self.total_s = self.wait_s + self.service_s + self.move_s + self.cold_s

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
            **({"occupancy": self.occupancy} if self.occupancy > 1 else {}),
            **({"cold_s": round(self.cold_s, 4)} if self.cold_s > 0 else {}),
        }


@dataclass(slots=True, frozen=True)
class ClassModel:
    """What one snapshot of the fleet says about (op, class): ``service = fixed + per_unit *
    units``, where that came from, and the queue-wait inputs. Built once per snapshot and
    profile file, since every decision for the op reads it."""

    fixed: float
    per_unit: float
    source: str
    slots: int
    backlog: int  # steps ahead of a new one: queued, reserved and running
    mean_s: float | None  # the class's moving-average step time, if observed
    move_latency_s: float
    bytes_per_s: float
    price_per_s: float
    workers: int = 0
    batches: bool = False  # the class's slots share one process per worker
    batch: dict[str, float] | None = None  # the profile's speedup at k steps at once
    cold_share: float = 0.0  # of the class's processes, those that have not run the op
    first_s: float = 0.0  # how long a process's first step of the op took
    running: int = 0  # of the backlog, the steps running (at most the slots)
    # an endpoint class's per-token prices: $ per unit of the op (its completion tokens)
    # and per byte of input (a prompt token is about four bytes)
    unit_price: float = 0.0
    byte_price: float = 0.0


def cached_models(state: FleetState, store: ProfileStore) -> dict[Any, Any]:
    """The snapshot's model cache, emptied when the profile file changed."""
    cache = state.models
    if cache.get(None) is not store:
        cache.clear()
        cache[None] = store
    return cache


def class_model(
    op: str, cls: str, state: FleetState, store: ProfileStore, cfg: FleetConfig
) -> ClassModel:
    cache = cached_models(state, store)
    found: ClassModel | None = cache.get((op, cls))
    if found is not None:
        return found
    online = state.online
    profile = store.get(op, cls)
    if profile is not None:
        ratio = online.get(f"{op}|{cls}|ratio", 1.0)
        fixed, per_unit, source = profile.fixed_s * ratio, profile.per_unit_s * ratio, "profile"
    elif (seen := online.get(f"{op}|{cls}|s")) is not None:
        fixed, per_unit, source = seen, 0.0, "online"
    else:
        fixed, per_unit, source = cfg.default_service_s, 0.0, "default"
    spec = cfg.classes[cls]
    remote = cfg.endpoints.get(spec.endpoint) if spec.endpoint else None
    model = ClassModel(
        fixed,
        per_unit,
        source,
        state.slots(cls),
        state.backlog(cls),
        online.get(f"*|{cls}|s"),
        spec.latency_s,
        spec.network_mb_s * 1e6,
        spec.price_per_hour / 3600.0,
        len(state.workers.get(cls, ())),
        spec.batches,
        profile.batch if profile is not None else None,
        *(state.cold_start(cls, op) if cfg.count_cold_starts else (0.0, 0.0)),
        min(state.busy(cls), state.slots(cls)),
        remote.price_out / 1e6 if remote is not None else 0.0,
        remote.price_in / 4e6 if remote is not None else 0.0,
    )
    cache[(op, cls)] = model
    return model


def service_time(
    req: RouteRequest, cls: str, state: FleetState, store: ProfileStore, cfg: FleetConfig
) -> tuple[float, str]:
    m = class_model(req.op or "", cls, state, store, cfg)
    return max(0.0, m.fixed + m.per_unit * req.units), m.source


def estimate(
    req: RouteRequest, cls: str, state: FleetState, store: ProfileStore, cfg: FleetConfig
) -> Estimate:
    return estimate_with(
        req, cls, class_model(req.op or "", cls, state, store, cfg), state, time.time()
    )


def queue_wait(slots: int, running: int, queued: int, mean_s: float) -> float:
    """When a new step starts, first come first served: ``queued`` steps of ``mean_s`` ahead
    of it, ``running`` steps half done on average, the other slots free. Slots free up in
    rounds of ``mean_s``: in each, the free ones at its start, the running ones half-way."""
    rounds, place = divmod(max(0, queued), slots)
    return rounds * mean_s + (mean_s / 2 if place >= slots - running else 0.0)


def estimate_with(
    req: RouteRequest, cls: str, m: ClassModel, state: FleetState, now: float
) -> Estimate:
    service = m.fixed + m.per_unit * req.units
    if service < 0.0:
        service = 0.0
    occupancy = 1
    if m.batches and m.workers:
        # The step joins a worker's batch: as many steps as are ahead of it per worker,
        # itself included, up to the worker's slots.
        occupancy = min(m.slots // m.workers, -(-(m.backlog + 1) // m.workers))
        occupancy = max(occupancy, 1)
        service = shared_time(service, m.batch, occupancy, req.kind == "model")
    if m.slots == 0:
        wait = math.inf
    else:
        mean = service if m.mean_s is None else m.mean_s
        wait = queue_wait(m.slots, m.running, m.backlog - m.running, mean)
        free_at = state.local_free_at.get(cls)
        if free_at is not None:
            wait = max(wait, free_at - now)
    size = req.size
    move = (size / m.bytes_per_s if size else 0.0) + m.move_latency_s
    # a first step in a process takes first_s: what it takes beyond the service time
    cold = m.cold_share * max(0.0, m.first_s - service) if m.cold_share else 0.0
    # the process's time is shared by the batch; a cold start is the process's time too
    cost = m.price_per_s * (service / occupancy + cold)
    if m.unit_price or m.byte_price:  # an endpoint's tokens, on top of the class's time
        cost += m.unit_price * req.units + m.byte_price * req.size
    return Estimate(cls, m.slots > 0, wait, service, move, cost, m.source, occupancy, cold)
