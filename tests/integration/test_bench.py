"""`fleet bench --quick` as CI's smoke run: it completes and writes its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(960)  # the subprocess may take its 900 s
def test_quick_benchmark_writes_its_outputs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FLEET_BROKER_URL", "FLEET_CONFIG")}
    res = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("bench.json", "bench.csv", "latency_cdf.png", "cost_vs_p95.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    doc = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["deployment"]: r for r in doc["summary"]}
    assert set(rows) == {"homogeneous", "static", "least-latency", "cost-sla"}
    assert all(r["workflows"] == 8 for r in rows.values())
    assert (tmp_path / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert "cost-sla vs homogeneous" in res.stdout or "least-latency vs homogeneous" in res.stdout
    # routing must not change answers: the same inputs, greedy decoding, every deployment
    answers = doc["meta"]["answers"]
    assert set(answers) == {"triage", "rag"}
    assert all(a["agree"] and a["distinct"] == 1 for a in answers.values()), answers
    assert "answers agree across deployments" in res.stdout
