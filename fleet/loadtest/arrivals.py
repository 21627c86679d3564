"""What the benchmark sends: the mix of example workflows (jobs, with inputs, SLA and weight)
and when they arrive (open loop at a rate, or closed loop at a concurrency; seeded)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet.loadtest import MIXES
from fleet.paths import EXAMPLES
from fleet.workflow.loader import load_workflow
from fleet.workflow.model import WorkflowSpec


@dataclass(frozen=True)
class Job:
    """One kind of workflow in the mix, with its inputs and latency SLA."""

    name: str
    file: Path
    inputs: Callable[[dict[str, str]], dict[str, Any]]
    sla_s: float
    weight: float

    def spec(self) -> WorkflowSpec:
        """The workflow without placement hints (prefer:), so that the policy decides."""
        spec = load_workflow(self.file)
        _strip_hints(spec)
        return spec


def _strip_hints(spec: WorkflowSpec) -> None:
    for node in spec.nodes:
        node.prefer = None
        if node.workflow is not None:
            _strip_hints(node.workflow)


def jobs(mix: str) -> list[Job]:
    """The jobs of a mix: ``full`` (triage, RAG, the voice agent), ``quick`` (triage, RAG) or
    ``sleeps`` (steps that wait, not compute: service times a busy machine cannot change)."""
    triage = Job(
        "triage",
        EXAMPLES / "triage.yaml",
        lambda ctx: {"ticket": "My blender arrived broken and I was charged twice, refund please."},
        sla_s=2.0,
        weight=0.5,
    )
    rag = Job(
        "rag",
        EXAMPLES / "rag.yaml",
        lambda ctx: {"question": "How long does standard shipping take?", "index": ctx["index"]},
        sla_s=6.0,
        weight=0.3,
    )
    voice = Job(
        "voice",
        EXAMPLES / "voice_agent.yaml",
        lambda ctx: {"audio": ctx["audio"], "api": ctx["api"], "index": ctx["index"]},
        sla_s=12.0,
        weight=0.2,
    )
    sleeps = Job("sleeps", EXAMPLES / "sleeps.yaml", lambda ctx: {"tag": "x"}, 1.0, 1.0)
    mixes = {"full": [triage, rag, voice], "quick": [triage, rag], "sleeps": [sleeps]}
    if mix not in mixes:
        raise ValueError(f"unknown mix '{mix}' (known: {', '.join(MIXES)})")
    return mixes[mix]


@dataclass
class Arrivals:
    """Open loop (``rate``: Poisson arrivals per second) or closed loop (``concurrency``),
    for ``count`` workflows or ``duration_s`` seconds of arrivals."""

    rate: float | None = None
    concurrency: int | None = None
    count: int | None = None
    duration_s: float | None = None
    seed: int = 7

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give either an arrival rate or a concurrency")
        if self.count is None and (self.duration_s is None or self.rate is None):
            raise ValueError("give a count (or, with an arrival rate, a duration)")

    def schedule(self, mix: list[Job]) -> list[tuple[float, Job]]:
        """(arrival offset in seconds, job), the same for every deployment (seeded)."""
        rng = np.random.default_rng(self.seed)
        weights = np.array([j.weight for j in mix]) / sum(j.weight for j in mix)
        out: list[tuple[float, Job]] = []
        t = 0.0
        while self.count is None or len(out) < self.count:
            if self.rate:
                t += float(rng.exponential(1.0 / self.rate))
                if self.duration_s is not None and t > self.duration_s:
                    break
            out.append((t, mix[int(rng.choice(len(mix), p=weights))]))
        return out
