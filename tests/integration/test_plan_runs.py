"""The plan is what runs: `fleet plan --save` sizes a fleet and splits an LLM call between a
fast and a cheap class; `fleet up --plan` starts those classes with the planned workers, and
the call runs as its prefill on the fast class and its decode on the cheap one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fleet.client.client import Fleet
from fleet.config import load_config
from fleet.deploy.local import free_port
from fleet.messaging.app import create_app
from tests.support.servers import read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, "-m", "fleet.cli.main"]

CATALOGUE = """
[defaults]
lifetime_years = 4
interest = 0.08
electricity_per_kwh = 0.40
utilisation = 1.0
[devices.fast]
capex = 20000
power_w = 700
memory_gb = 80
bandwidth_gbs = 3000
tflops = 900
network_gbs = 50
slots = 1
serves = ["gpu"]
[devices.cheap]
capex = 1000
power_w = 100
memory_gb = 32
bandwidth_gbs = 50
tflops = 1
network_gbs = 50
slots = 1
serves = ["cpu"]
[ops."llm.prefill"]
fast = { fixed_s = 0.0, per_unit_s = 0.00005, source = "assumed: test" }
cheap = { fixed_s = 0.0, per_unit_s = 0.004, source = "assumed: test" }
[ops."llm.decode"]
fast = { fixed_s = 0.0, per_unit_s = 0.002, source = "assumed: test" }
cheap = { fixed_s = 0.0, per_unit_s = 0.01, source = "assumed: test" }
[ops."llm.prompt"]
cheap = { fixed_s = 0.0001, per_unit_s = 0.0, source = "assumed: test" }
[split."llm.generate"]
parts = ["llm.prefill", "llm.decode"]
handover_bytes_per_unit = 18500
default_units = 400
units_param = "max_tokens"
default_param_units = 64
"""

ASK = """name: ask
inputs: [q]
nodes:
  - {name: prompt, op: llm.prompt, inputs: {question: inputs.q}}
  - {name: answer, op: llm.generate, inputs: {prompt: prompt.prompt}, params: {max_tokens: 20}}
outputs: {a: answer.text}
"""


def test_fleet_up_plan_runs_the_planned_split(tmp_path: Path) -> None:
    (tmp_path / "cat.toml").write_text(CATALOGUE)
    (tmp_path / "ask.yaml").write_text(ASK)
    (tmp_path / "load.yaml").write_text(
        "workflows:\n  - {file: ask.yaml, rate: 10, sla_p95_s: 1.5, "
        "tokens: {answer: {prompt: 1000}}}\n"
    )
    plan_file = tmp_path / "plan.toml"
    made = subprocess.run(
        [
            *FLEET,
            "plan",
            "--catalogue",
            str(tmp_path / "cat.toml"),
            "--save",
            str(plan_file),
            str(tmp_path / "load.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    planned = tomllib.loads(plan_file.read_text())
    assert planned["splits"] == {"ask:answer": {"prefill": "fast", "decode": "cheap"}}
    running = {c: spec for c, spec in planned["classes"].items() if spec.get("enabled", True)}
    workers = {c: spec["workers"] for c, spec in running.items()}
    assert workers["fast"] >= 1 and workers["cheap"] >= 1
    assert set(running) == {"fast", "cheap"}  # the built-in classes are left out

    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "FLEET_BROKER_URL": url, "COLUMNS": "200"}
    env.pop("FLEET_CONFIG", None)
    up = subprocess.Popen(
        [*FLEET, "up", "--plan", str(plan_file), "--no-flower", "--workdir", str(tmp_path / "w")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        out = read_until(up, "fleet is up", 120)
        assert "fleet is up" in out, out
        assert sum(out.count(f"worker: {c}") for c in workers) == sum(workers.values()), out
        cfg = load_config(env={"FLEET_CONFIG": str(plan_file), "FLEET_BROKER_URL": url})
        client = Fleet(create_app(cfg), cfg)
        run = client.submit(tmp_path / "ask.yaml", {"q": "Where is my order?"})
        assert isinstance(run.get(timeout=180)["a"], str)
        steps = {e.node: e for e in run.trace() if e.status == "succeeded"}
        assert steps["answer#1/prefill"].cls == "fast"
        assert steps["answer#1/decode"].cls == "cheap"
        assert steps["prompt"].cls == planned["routes"]["ask:prompt"]
    finally:
        from fleet.messaging.app import app

        app.set_current()
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
