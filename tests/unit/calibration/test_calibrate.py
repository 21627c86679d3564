"""Calibration's pure part: what the profile runs' traces say, and the simulated replay of
a measured workload (no fleet: the traces here are written by hand)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.calibration.calibrate import compare, flow_for, key, profile
from fleet.loadtest.arrivals import jobs


def test_trace_paths_become_planning_paths() -> None:
    assert key("tools#1/call") == "tools/call"
    assert key("tools#2/call") == "tools#2/call"
    assert key("each[3]") == "each"
    assert key("a#1/b#12/c") == "a/b#12/c"


STEPS = [  # triage: node, op, class, start, seconds, CPU seconds
    ("clean", "text.normalize", "cpu", 0.005, 0.001, 0.001),
    ("keywords", "text.keywords", "cpu", 0.010, 0.001, 0.001),
    ("stats", "text.stats", "cpu", 0.015, 0.001, 0.001),
    ("urgent", "text.contains", "cpu", 0.020, 0.001, 0.001),
    ("lookup", "test.sleep", "io", 0.010, 0.200, 0.0),
    ("escalate", "text.template", "cpu", 0.030, 0.001, 0.001),
    ("summary", "text.template", "cpu", 0.215, 0.001, 0.001),
]


def _row(at: float, latency: float | None = None) -> dict[str, Any]:
    trace: list[list[Any]] = [[n, op, c, at + s, at + s + d, cpu] for n, op, c, s, d, cpu in STEPS]
    end = max(e[4] for e in trace) + 0.001
    return {
        "job": "triage",
        "status": "succeeded",
        "submitted_at": at,
        "finished_at": end,
        "latency_s": end - at if latency is None else latency,
        "trace": trace,
    }


def _doc(bench: list[dict[str, Any]]) -> dict[str, Any]:
    runs = [_row(10.0 * i) for i in range(6)]
    return {"cpus": 2, "quick": True, "profile": {"static": runs}, "bench": {"static": bench}}


def test_the_profile_reads_node_times_chances_and_the_engines_hop() -> None:
    prof = profile(_doc([]))
    nt = prof.times["triage"]
    assert nt.runs == 6 and nt.chance("lookup") == 1.0 and nt.chance("routine") == 0.0
    assert nt.time("lookup", 1) == pytest.approx((0.2, 0.02, 0.0))
    assert prof.hop_s == pytest.approx(0.004, abs=1e-6)  # most steps start 4 ms after an end
    flow = flow_for(jobs("quick")[0], nt)
    assert "routine" not in flow.graph and "escalate" in flow.graph  # it never ran


def test_a_replay_of_isolated_runs_predicts_their_latency() -> None:
    # runs 5 s apart never meet: the simulated latency is the critical path plus the hops
    measured = [_row(5.0 * i) for i in range(8)]
    (row,) = compare(_doc(measured), seeds=2)
    assert row.measured["p50_s"] == pytest.approx(0.217, abs=1e-3)
    assert row.error("p50_s") == pytest.approx(0.0, abs=0.05)
    # the same arrivals all at once on the 2-slot cpu class and 16 io threads: the lookups
    # overlap (io), the text steps queue a little -- still far below the 10x a wrong model
    # of the io pool (one at a time) would give
    burst = [_row(0.0) for _ in range(8)]
    (row,) = compare(_doc(burst), seeds=2)
    assert row.simulated["p95_s"] < 0.4
