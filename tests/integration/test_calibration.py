"""The simulator against the live fleet: `fleet calibrate --quick` on a short run.

Each deployment's fleet runs triage and RAG at 1 per second for 60 s (about 60 workflows: at
30 s the p95 of 32 runs was noisy enough to miss by 42 % once in CI);
the simulator replays the same arrivals on a model built from isolated profile runs only.
docs/planning.md has the 60-s run, held to the issue's bounds (p50 15 %, p95 25 %). A p95 of
60 runs is their third-slowest, and on a shared 2-core machine the simulator's p50 has
come out 2-12 % low, so this short run is held to 20 % (p50) and 40 % (p95): a check that
still fails on a wrong model (the first version of the host model was 46 % off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
P50, P95 = 0.20, 0.40


@pytest.mark.timeout(1500)  # six fleets started, profiled or measured in turn: ~8 minutes
def test_the_simulator_predicts_the_live_fleets_latency(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FLEET_BROKER_URL", "FLEET_CONFIG")}
    cmd = [sys.executable, "-m", "fleet.cli.main", "calibrate", "--quick", "--duration", "60"]
    res = subprocess.run(
        [*cmd, "--profile-runs", "10", "--out", str(tmp_path), "--json"],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    rows = {r["deployment"]: r for r in doc["rows"]}
    assert set(rows) == {"homogeneous", "static", "least-latency", "cost-sla"}
    for name, r in rows.items():
        assert r["measured"]["runs"] >= 45, (name, r["measured"])
        assert r["simulated"]["runs"] >= 5 * r["measured"]["runs"] * 0.9  # every seed, every run
        assert abs(r["p50_error"]) <= P50, (name, r["measured"], r["simulated"])
        assert abs(r["p95_error"]) <= P95, (name, r["measured"], r["simulated"])
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert set(saved["profile"]) == {"static", "homogeneous"}
    # the model was built from the profile alone: replaying the saved file gives the same
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet.cli.main",
            "calibrate",
            "--from",
            str(tmp_path / "calibration.json"),
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    replay = json.loads(again.stdout[again.stdout.index("{") :])
    assert [r["simulated"] for r in replay["rows"]] == [r["simulated"] for r in doc["rows"]]
