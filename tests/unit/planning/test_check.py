"""`fleet plan --check`: the quantile read from the run-time histogram, and what drifted."""

from __future__ import annotations

import pytest

from fleet.config import PlanPrediction
from fleet.planning.check import Observed, compare, quantile


def test_the_p95_comes_from_the_cumulative_histogram() -> None:
    # 100 runs: 50 within 0.1 s, 90 within 0.25 s, all within 0.5 s
    buckets = [(0.1, 50.0), (0.25, 90.0), (0.5, 100.0), (1.0, 100.0)]
    assert quantile(0.95, buckets, 100) == pytest.approx(0.25 + 0.25 * 0.5)
    assert quantile(0.5, buckets, 100) == pytest.approx(0.1)
    assert quantile(0.95, buckets, 0) is None
    assert quantile(0.95, [(0.1, 0.0), (0.2, 0.0)], 10) == 0.2  # beyond the last bound


def test_what_drifted_is_named_and_what_held_is_not() -> None:
    predicted = PlanPrediction(
        workflows={
            "voice": {"rate": 20.0, "p50_s": 0.5, "p95_s": 0.7, "sla_s": 3.0},
            "rag": {"rate": 5.0, "p95_s": 1.0, "sla_s": 4.0},
        },
        classes={"a100": 0.6, "cpu-2": 0.5, "io-32": 0.1},
    )
    seen = Observed(
        seconds=10.0,
        runs={"voice": 200.0, "rag": 12.0},
        p95_s={"voice": 3.4, "rag": 1.1},
        utilisation={"a100": 0.65, "cpu-2": 0.95},
    )
    found = {(f.subject, f.what): f for f in compare(predicted, seen)}
    assert not found[("workflow voice", "rate")].drifted  # 20/s as planned
    assert found[("workflow voice", "p95")].drifted
    assert "3.400 s is over its SLA 3 s" in found[("workflow voice", "p95")].why
    rag_rate = found[("workflow rag", "rate")]
    assert rag_rate.drifted and "1.20/s against 5/s planned" in rag_rate.why
    assert not found[("workflow rag", "p95")].drifted  # 1.1 s is within 25 % of 1.0 s
    assert not found[("class a100", "utilisation")].drifted
    cpu = found[("class cpu-2", "utilisation")]
    assert cpu.drifted and "too few workers" in cpu.why
    assert found[("class io-32", "utilisation")].why == "no live worker"
