"""What one deployment's round gives: a row per workflow run (latency, busy time per class,
routing overhead, an answer fingerprint, the steps that ran). Results flow to the report."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.constants import BLOB_PREFIX
from fleet.loadtest.arrivals import Job

if TYPE_CHECKING:
    from fleet.client.client import RunHandle
    from fleet.store.records import RunInfo


@dataclass
class Result:
    deployment: str
    round: int
    runs: list[dict[str, Any]] = field(default_factory=list)  # one row per workflow
    started: float = 0.0
    ended: float = 0.0
    slots: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)


def row(job: Job, handle: RunHandle, info: RunInfo | None) -> dict[str, Any]:
    trace = handle.trace()
    busy: dict[str, float] = {}
    decide = []
    for e in trace:
        if e.cls and e.status in ("succeeded", "failed"):
            busy[e.cls] = busy.get(e.cls, 0.0) + e.run_s
        if e.route.get("decide_us") is not None:
            decide.append(float(e.route["decide_us"]))
    latency = None
    if info is not None and info.finished_at is not None and info.submitted_at is not None:
        latency = info.finished_at - info.submitted_at
    return {
        "job": job.name,
        "run": handle.id,
        "status": info.status if info else "unknown",
        "submitted_at": info.submitted_at if info else None,
        "finished_at": info.finished_at if info else None,
        "latency_s": latency,
        "sla_s": job.sla_s,
        "busy_s": busy,
        "steps": sum(1 for e in trace if e.status == "succeeded"),
        "decide_us": decide,
        # the model loads its steps waited for (seconds each), and where its model steps ran
        "cold_s": [e.cold_s for e in trace if e.cold_s],
        "model_classes": [e.cls for e in trace if e.kind == "model" and e.cls],
        "answer": answer_digest(info.outputs if info else None),
        # each step that ran: node, op, class, started, ended, CPU seconds (calibration)
        "trace": [
            [e.node, e.op, e.cls, e.started_at, e.ended_at, e.cpu_s]
            for e in trace
            if e.status == "succeeded"
        ],
    }


def answer_digest(outputs: dict[str, Any] | None) -> str | None:
    """A fingerprint of a run's outputs, blob references left out (their ids are random):
    the same inputs under greedy decoding must give the same one on every deployment."""
    if outputs is None:
        return None

    def strip(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(BLOB_PREFIX):
            return "<blob>"
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    text = json.dumps(strip(outputs), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answer_agreement(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per workflow: how many different answers the deployments gave to the same inputs
    (routing must not change answers: 1 each)."""
    seen: dict[str, dict[str, set[str]]] = {}
    for res in results:
        for run in res.runs:
            if run.get("answer"):
                seen.setdefault(run["job"], {}).setdefault(run["answer"], set()).add(res.deployment)
    return {
        job: {
            "distinct": len(answers),
            "agree": len(answers) == 1,
            "by_answer": {a: sorted(deps) for a, deps in answers.items()},
        }
        for job, answers in seen.items()
    }
