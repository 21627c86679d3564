"""The packaged H100 profiles are the H100 measurement, not numbers of their own: each row is
derived again here from the raw benchmark file (numpy's least-squares fit for prefill, the
measured ms per token for decode), and the profile predicts the measured timings back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.routing.profiles import PACKAGED, ProfileStore

ROOT = Path(__file__).resolve().parents[3]
RAW = ROOT / "docs" / "benchmarks" / "h100-llamacpp-gemma270m.json"
H100 = PACKAGED.with_name("profiles-h100.json")
CONFIGS = {"gpu": "gpu", "cpu": "cpu16"}  # class -> the benchmark's configuration
PREFILL = (32, 512, 2048)


def _raw(config: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(RAW.read_text())
    (row,) = [r for r in rows if r["config"] == config]
    return row


@pytest.mark.parametrize("cls", sorted(CONFIGS))
def test_each_h100_row_is_the_raw_measurement(cls: str) -> None:
    raw, store = _raw(CONFIGS[cls]), ProfileStore.load(H100)
    decode = store.get("llm.decode", cls)
    assert decode is not None
    assert decode.per_unit_s == pytest.approx(raw["decode_ms_per_tok"] / 1000, rel=1e-3)
    assert decode.per_unit_s == pytest.approx(1 / raw["decode_tok_s"], rel=0.01)
    prefill = store.get("llm.prefill", cls)
    assert prefill is not None
    slope, intercept = np.polyfit(PREFILL, [raw[f"prefill_{n}_s"] for n in PREFILL], 1)
    assert prefill.per_unit_s == pytest.approx(slope, rel=1e-3)
    assert prefill.fixed_s == pytest.approx(max(0.0, intercept), abs=1e-5)  # no negative time
    generate = store.get("llm.generate", cls)  # a 512-token prompt, then decode per token
    assert generate is not None
    assert generate.fixed_s == pytest.approx(raw["prefill_512_s"], rel=1e-3)
    assert generate.per_unit_s == pytest.approx(decode.per_unit_s)


@pytest.mark.parametrize("cls", sorted(CONFIGS))
def test_the_prefill_profile_predicts_the_measured_prompts(cls: str) -> None:
    raw, store = _raw(CONFIGS[cls]), ProfileStore.load(H100)
    prefill = store.get("llm.prefill", cls)
    assert prefill is not None
    # the longest prompt, which routing's estimates care about most, within 10 %
    assert prefill.predict(2048) == pytest.approx(raw["prefill_2048_s"], rel=0.10)
