"""What the simulator knows of a fleet: its classes (servers, price, network, host), how long
each step takes on each class, the cores a step keeps busy, and the live fleet's routing
inputs (a ``FleetConfig`` and a ``ProfileStore``) for the policy objects.

Two sources build one: a hardware catalogue and a plan (:func:`catalogue_model`), and this
machine's measurements of a live fleet (``fleet.calibration.calibrate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.config import ClassSpec, FleetConfig
from fleet.planning.catalogue import Catalogue
from fleet.planning.program import eligible
from fleet.planning.workload import StepLoad, WorkflowLoad
from fleet.routing.profiles import OpProfile, ProfileStore

ELASTIC_SERVERS = 4096  # a class priced per unit with no stated capacity never queues
COMPUTE_DEMAND = 0.3  # a step keeping fewer cores busy than this is waiting, not computing


@dataclass(frozen=True)
class SimClass:
    name: str
    servers: int  # workers x slots
    price_per_hour: float  # per worker
    workers: int
    network_bytes_s: float
    host: str | None = None  # classes on one host share its cores (SimModel.hosts)
    # Its slots are one process's batch per worker (see ClassSpec.batches): a step that
    # starts beside k - 1 others takes k / speedup(k) as long, by its profile's ``batch``.
    batches: bool = False


@dataclass
class SimModel:
    classes: dict[str, SimClass]
    # mean seconds of a step on a class (alone on its host); None: the class cannot run it
    service: Callable[[WorkflowLoad, StepLoad, str], float | None]
    options: Callable[
        [WorkflowLoad, StepLoad], list[str]
    ]  # the classes a step may use, preferred first
    cfg: FleetConfig
    profiles: ProfileStore
    hosts: dict[str, float] = field(default_factory=dict)  # host -> cores
    # cores a step keeps busy on a class (CPU seconds / run seconds); 0: not modelled
    demand: Callable[[WorkflowLoad, StepLoad, str], float] = lambda f, s, j: 0.0
    # the coefficient of variation of a step's service time on a class
    spread: Callable[[WorkflowLoad, StepLoad, str], float] = lambda f, s, j: 0.2
    hop_s: float = 0.0  # the engine's per-step dispatch time (broker round trip)
    tail_s: float = 0.0  # from a run's last step to its end (the run record's bookkeeping)
    handover_s: float = 0.0005  # a network hop between classes, on top of bytes / bandwidth


def simulated_config(classes: dict[str, SimClass], policy: str = "least-latency") -> FleetConfig:
    """The configuration the live fleet would have: one class per device, its price."""
    specs = {}
    for j, c in classes.items():
        slots = max(1, c.servers // max(1, c.workers))
        specs[j] = ClassSpec(
            name=j,
            concurrency=slots,
            # a slot's price, a batching worker's own (ClassSpec.hourly_cost)
            price_per_hour=c.price_per_hour / (1 if c.batches else slots),
            network_mb_s=c.network_bytes_s / 1e6,
            **({"pool": "threads", "device": "cuda"} if c.batches else {}),
        )
    return FleetConfig(classes=specs, control_class=next(iter(specs)), policy=policy)


def catalogue_model(
    flows: list[WorkflowLoad], cat: Catalogue, workers: dict[str, int], cv: float | None = None
) -> SimModel:
    """A planned fleet of catalogue devices, each its own host (no shared cores). Service
    times vary by the catalogue's coefficient of variation per (op, device), or ``cv``."""
    classes = {
        j: SimClass(j, n * d.slots, d.price_per_hour, n, d.network_gbs * 1e9, batches=d.batches)
        for j, n in workers.items()
        if n and (d := cat.devices[j])
    }
    for j, d in cat.devices.items():  # priced per unit: its capacity, or as much as is asked
        if d.per_unit:
            classes[j] = SimClass(j, d.capacity or ELASTIC_SERVERS, 0.0, 1, d.network_gbs * 1e9)
    if not classes:
        raise ValueError("no workers: the fleet to simulate is empty")
    store = ProfileStore(source="catalogue")
    for f in flows:
        for s in f.steps():
            for j in cat.devices:
                m = cat.latency(j, s.op, f.kind)
                if m is not None:
                    store.put(OpProfile(s.op, j, m.fixed_s, m.per_unit_s, samples=1, batch=m.batch))

    def service(f: WorkflowLoad, s: StepLoad, j: str) -> float | None:
        m = cat.latency(j, s.op, f.kind)
        return None if m is None else m.time(s.units)

    def spread(f: WorkflowLoad, s: StepLoad, j: str) -> float:
        return cat.cv(j, s.op, f.kind) if cv is None else cv

    return SimModel(
        classes,
        service,
        lambda f, s: eligible(cat, f, s.op),
        simulated_config(classes),
        store,
        spread=spread,
    )
