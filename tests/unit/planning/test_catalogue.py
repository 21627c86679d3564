"""The hardware catalogue: prices by the TCO formula, latencies with their provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fleet.planning.catalogue import Catalogue
from fleet.planning.queueing import erlang_c

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


def test_price_per_hour_is_the_annuity_plus_power(cat: Catalogue) -> None:
    a100 = cat.devices["a100"]  # $8,000, 400 W, 4 years at 8 %, $0.40/kWh
    annuity = 8000 * 0.08 / (1 - 1.08**-4)
    assert a100.price_per_hour == pytest.approx(annuity / 8760 + 0.4 * 0.4, rel=1e-9)
    assert set(cat.devices) >= {"a40", "a100", "gaudi3", "mi300x", "h100", "b200"}  # Table 5
    prices = [cat.devices[d].price_per_hour for d in ("a40", "a100", "h100", "b200")]
    assert prices == sorted(prices)


def test_every_latency_says_where_it_comes_from(cat: Catalogue) -> None:
    h100 = cat.latency("h100", "llm.decode")
    assert h100 is not None and h100.source.startswith("measured: profiles-h100.json")
    # the H100's measured decode time per token (docs/benchmarks: the raw measurement)
    raw = json.loads((ROOT / "docs/benchmarks/h100-llamacpp-gemma270m.json").read_text())
    measured = next(r["decode_ms_per_tok"] for r in raw if r["config"] == "gpu") / 1000
    assert h100.per_unit_s == pytest.approx(measured, rel=1e-3)
    a40 = cat.latency("a40", "llm.decode")  # memory-bound: scaled by bandwidth
    assert a40 is not None and a40.source.startswith("derived: h100")
    assert a40.per_unit_s == pytest.approx(measured * 3350 / 696, rel=1e-3)
    pre = cat.latency("a40", "llm.prefill")  # compute-bound: scaled by TFLOPS
    assert pre is not None and "TFLOPS" in pre.source
    assert cat.latency("io-32", "llm.decode") is None  # an I/O pool runs tools only
    assert cat.latency("io-32", "http.request") is not None
    assert cat.latency("h100", "no.such.op") is None
    for d in cat.devices:
        for op in ("llm.prefill", "llm.decode", "http.request", "text.template"):
            m = cat.latency(d, op)
            assert m is None or m.source.split(":")[0] in ("measured", "derived", "assumed")


def test_erlang_c_matches_the_textbook() -> None:
    one = erlang_c(0.5, 1.0, 1)  # M/M/1 at rho 0.5: P(wait) = 0.5, Wq = rho / (mu - lambda)
    assert one.p_wait == pytest.approx(0.5) and one.mean_s == pytest.approx(1.0)
    two = erlang_c(1.0, 1.0, 2)  # M/M/2 at rho 0.5: C = 1/3, Wq = C / (c mu - lambda)
    assert two.p_wait == pytest.approx(1 / 3) and two.mean_s == pytest.approx(1 / 3)
    assert math.isinf(erlang_c(3.0, 1.0, 2).mean_s)  # overloaded
