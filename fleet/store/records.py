"""What a run's record holds, as the store hands it out: each step's trace entry, the run's
status and result, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("succeeded", "failed")


@dataclass(frozen=True)
class TraceEntry:
    """One step of a run: where it went, why, and how long it waited and ran."""

    node: str
    op: str
    kind: str
    cls: str | None
    queue: str | None
    worker: str | None
    status: str
    sent_at: float | None
    started_at: float
    ended_at: float
    attempt: int = 0
    route: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rss_mb: float | None = None  # the worker process's peak memory so far
    # CPU seconds the step used, native threads included (prefork: the whole process): its
    # CPU demand is cpu_s / run_s, the cores it keeps busy (the simulator's host model)
    cpu_s: float | None = None
    # Steps its worker process ran at once while it ran, itself included (a batching class
    # runs several in one batch; the mean of what it saw at start and end)
    occupancy: int = 1
    # seconds of run_s spent loading models into the process (a cold start), when any
    cold_s: float | None = None
    # where it computed when that was not its class's device: "cpu (no GPU usable here)"
    # for a step of a class that binds to a GPU, on a worker that has none
    device: str | None = None
    # what the step spent on a priced service (an LLM endpoint), beyond its class's time
    tokens: int | None = None
    spent_usd: float | None = None
    # a node the run waits on (status "waiting"): the signal it waits for, and until when
    signal: str | None = None
    until: float | None = None

    @property
    def wait_s(self) -> float | None:
        return None if self.sent_at is None else max(0.0, self.started_at - self.sent_at)

    @property
    def run_s(self) -> float:
        return self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "kind": self.kind,
            "class": self.cls,
            "queue": self.queue,
            "worker": self.worker,
            "status": self.status,
            "sent_at": self.sent_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "wait_s": self.wait_s,
            "run_s": self.run_s,
            "attempt": self.attempt,
            "route": self.route,
            "error": self.error,
            "rss_mb": self.rss_mb,
            "cpu_s": self.cpu_s,
            "occupancy": self.occupancy,
            "cold_s": self.cold_s,
            **({"device": self.device} if self.device else {}),
            **({"tokens": self.tokens} if self.tokens is not None else {}),
            **({"spent_usd": self.spent_usd} if self.spent_usd is not None else {}),
            **({"signal": self.signal} if self.signal is not None else {}),
            **({"until": self.until} if self.until is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceEntry:
        return cls(
            node=d["node"],
            op=d["op"],
            kind=d["kind"],
            cls=d.get("class"),
            queue=d.get("queue"),
            worker=d.get("worker"),
            status=d["status"],
            sent_at=d.get("sent_at"),
            started_at=d["started_at"],
            ended_at=d["ended_at"],
            attempt=d.get("attempt", 0),
            route=d.get("route") or {},
            error=d.get("error"),
            rss_mb=d.get("rss_mb"),
            cpu_s=d.get("cpu_s"),
            occupancy=int(d.get("occupancy") or 1),
            cold_s=d.get("cold_s"),
            device=d.get("device"),
            tokens=d.get("tokens"),
            spent_usd=d.get("spent_usd"),
            signal=d.get("signal"),
            until=d.get("until"),
        )


Command = tuple[str, tuple[Any, ...]]  # a Redis command a broker would run: (name, arguments)


@dataclass
class Claim:
    """Claims a step takes as it records its outputs (``RunStore.record_step``): ``paths``
    for ``owner``; ``won`` is filled with those it holds (see ``RunStore.claim``).
    ``sends``: for each path, the broker commands that publish its step (a Redis broker
    that is the store's server): run by the same script for each path won, while the run
    is running -- the step sends its successors in the round trip that records it."""

    owner: str
    paths: list[str]
    won: list[str] | None = None
    sends: list[list[Command]] | None = None


@dataclass
class Acknowledgement:
    """The broker commands that acknowledge a step's message (kombu's own, where the broker
    is the store's Redis), for ``RunStore.record_step``: run in the round trip that records
    the step when that round trip leaves the step nothing more to do -- it sends the steps
    the step made ready, or ends the run. ``done``: they ran (the worker then does not
    acknowledge the message again)."""

    commands: list[Command]
    done: bool = False


@dataclass(frozen=True)
class NewRun:
    """A run to record (``RunStore.create_runs``): ``reply``: the Celery task whose result is
    its outcome; ``spec``: its workflow's digest, for a run the engine drives (the orphan
    check watches those until they end); ``follow``: mark it followed (fleet.store.events);
    ``claim``: its first steps, claimed in the same round trip (``claim.won``)."""

    run_id: str
    workflow: str
    meta: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    reply: dict[str, Any] | None = None
    spec: str | None = None
    follow: bool = False
    claim: Claim | None = None


@dataclass(frozen=True)
class RunInfo:
    id: str
    workflow: str
    status: str
    submitted_at: float | None
    finished_at: float | None
    outputs: dict[str, Any] | None
    error: str | None
    error_node: str | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Ending:
    """How a run ended, as the store that ended it saw it."""

    status: str
    outputs: dict[str, Any] | None = None
    error: str | None = None
    node: str | None = None
