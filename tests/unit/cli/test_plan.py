"""`fleet plan` and `fleet simulate` from the command line, and the fleet config a plan writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fleet.config import load_config
from fleet.sdk.registry import registry


def _fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_plan_writes_a_config_the_fleet_accepts_and_routes_by(tmp_path: Path) -> None:
    out = tmp_path / "plan.toml"
    res = _fleet("plan", "--save", str(out), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["cost_per_hour"] < min(doc["baselines"].values())
    assert all(p["p95_s"] <= p["sla_s"] for p in doc["predicted"].values())
    cfg = load_config(env={"FLEET_CONFIG": str(out)})
    assert cfg.policy == "static" and set(doc["workers"]) <= set(cfg.classes)
    registry.load(cfg.op_modules, cfg.op_plugins)
    for key, cls in cfg.routes.items():  # every planned class can run its step's op
        assert cls in cfg.classes, key
    stt = registry.get("speech.stt").eligible(cfg.classes)
    assert cfg.routes["voice-support-agent:transcribe"] in stt


def test_simulate_reports_its_speed_and_the_slas(tmp_path: Path) -> None:
    res = _fleet("simulate", "--duration", "30", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [r["policy"] for r in doc["runs"]] == ["plan", "least-latency", "cost-sla"]
    assert doc["steps"] > 10_000 and doc["steps_per_s"] > 1000
    assert all(all(r["sla_met"].values()) for r in doc["runs"])


def test_bad_workloads_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("workflows:\n  - {file: voice_agent.yaml, rate: 5}\n")
    res = _fleet("plan", str(bad))
    assert res.returncode == 2 and "workflows[0]: missing sla_p95_s" in res.stderr
    tight = tmp_path / "t.yaml"
    tight.write_text("workflows:\n  - {file: voice_agent.yaml, rate: 5, sla_p95_s: 0.05}\n")
    res = _fleet("plan", str(tight))
    assert res.returncode == 2 and "'voice-support-agent' by" in res.stderr
