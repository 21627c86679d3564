"""`fleet plan` and `fleet simulate` from the command line, and the fleet config a plan writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import load_config
from fleet.paths import DATA
from fleet.sdk.registry import registry
from tests.unit.planning.test_planner import LLM, TWO


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


def _err(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    return " ".join(res.stderr.split())  # rich wraps long messages


@pytest.mark.parametrize(
    "text, message",
    [
        ("workflows:\n  - {file: voice_agent.yaml, rate: 5}\n", "workflows[0]: missing sla_p95_s"),
        (
            "workflows:\n  - {file: voice_agent.yaml, rate: 5, sla_p95_s: 0.05}\n",
            "'voice-support-agent': its fastest placement takes 0.",
        ),
        (
            "workflows:\n  - {file: voice_agent.yaml, rate: fast, sla_p95_s: 5}\n",
            "workflows[0]: rate: 'fast' is not a number",
        ),
        (
            "workflows:\n  - {file: voice_agent.yaml, rate: -1, sla_p95_s: 5}\n",
            "workflows[0]: rate: -1 must be a positive number",
        ),
        ("workflows: 5\n", "expected 'workflows:', a list of"),
        ("workflows: [5]\n", "workflows[0]: expected a table"),
        (
            "workflows:\n  - {file: mine.yaml, rate: 1, sla_p95_s: 5}\n",
            "workflows[0]: file: 'mine.yaml' not found (looked in",
        ),
        (
            "workflows:\n  - {file: voice_agent.yaml, rate: 1, sla: 5, sla_p95_s: 5}\n",
            "workflows[0]: unknown field(s) sla",
        ),
    ],
)
def test_bad_workloads_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text(text)
    res = _fleet("plan", str(bad))
    assert res.returncode == 2, res.stdout
    assert message in _err(res)
    assert str(tmp_path) in _err(res) or "voice-support-agent" in message  # names the file


def test_a_rule_for_a_device_the_catalogue_lacks_is_refused(tmp_path: Path) -> None:
    cat = tmp_path / "cat.toml"
    text = (DATA / "catalogue.toml").read_text()
    cat.write_text(
        text + '\n[ops."llm.decode".h200]\nfixed_s = 0\nper_unit_s = 0.001\nsource = "assumed"\n'
    )
    res = _fleet("plan", "--catalogue", str(cat))
    assert res.returncode == 2
    assert "[ops.\"llm.decode\".h200]: 'h200' is not a device or kind" in _err(res)


def test_a_catalogue_without_the_usual_devices_still_plans_and_compares(tmp_path: Path) -> None:
    (tmp_path / "cat.toml").write_text(TWO.format(net=10.0))
    (tmp_path / "ask.yaml").write_text(LLM)
    (tmp_path / "load.yaml").write_text(
        "workflows:\n  - {file: ask.yaml, rate: 10, sla_p95_s: 0.15, "
        "tokens: {answer: {prompt: 1000}}}\n"
    )
    res = _fleet(
        "plan", str(tmp_path / "load.yaml"), "--catalogue", str(tmp_path / "cat.toml"), "--json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["predicted"]["ask"]["p95_s"] <= 0.15  # it used to say the SLA was impossible
    assert list(doc["baselines"]) == ["fast"]
    assert any("baseline cheap: skipped" in n for n in doc["notes"])
    res = _fleet(
        "plan",
        str(tmp_path / "load.yaml"),
        "--catalogue",
        str(tmp_path / "cat.toml"),
        "--violation-price",
        "0.001",
        "--json",
    )
    priced = json.loads(res.stdout)
    assert priced["cost_per_hour"] < doc["cost_per_hour"]
    assert priced["predicted"]["ask"]["p95_s"] > 0.15


def test_plan_prices_the_per_unit_example_as_docs_planning_md_shows() -> None:
    plans = DATA.parent / "examples" / "plans"
    res = _fleet(
        "plan", str(plans / "per-unit.yaml"), "--catalogue", str(plans / "per-unit.toml"), "--json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["placement"] == {"answer": {"generate:prefill": "hp", "generate:decode": "co"}}
    assert abs(doc["cost_per_request"] - 0.095) < 1e-9
    assert doc["workers"] == {} and set(doc["per_unit_classes"]) == {"hp", "co"}
    assert abs(doc["costs"]["egress"] - 36.0) < 1e-6  # 1 GB per run at $0.01, 3,600 runs/h
