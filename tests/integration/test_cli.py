"""The `fleet` command as a user runs it: real subprocesses against the real fleet."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet, free_port
from tests.support.servers import read_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, "-m", "fleet.cli.main"]


def fleet(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEET, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=ROOT,
    )


def test_validate_names_node_and_line_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ninputs: [t]\nnodes:\n"
        "  - name: a\n    op: text.upper\n    inputs: {text: inputs.t}\n"
        "  - name: b\n    op: text.upper\n    inputs: {text: a.txt}\n"
        "  - name: b\n    op: nope.op\n"
    )
    res = fleet("validate", str(bad))
    assert res.returncode == 2
    assert (
        f"{bad}:7: node 'b': field 'inputs.text': 'a.txt': node 'a' has no output 'txt'"
        in res.stderr
    )
    assert (
        f"{bad}:10: node 'b': field 'name': duplicate node name (first defined on line 7)"
        in res.stderr
    )
    assert "unknown op 'nope.op'" in res.stderr
    assert fleet("validate", str(ROOT / "fleet" / "examples" / "triage.yaml")).returncode == 0


def test_submit_malformed_file_enqueues_nothing(
    tmp_path: Path, local_fleet: LocalFleet, broker: redis.Redis
) -> None:
    bad = tmp_path / "cycle.yaml"
    bad.write_text(
        "name: cyc\nnodes:\n"
        "  - {name: a, op: text.upper, inputs: {text: b.text}}\n"
        "  - {name: b, op: text.upper, inputs: {text: a.text}}\n"
    )
    res = fleet("submit", str(bad))
    assert res.returncode == 2 and "unbounded cycle" in res.stderr
    # no run of it was recorded (a key-set comparison is fooled by other tests' late writes)
    records = [k for k in broker.keys("fleet:run:*") if k.count(":") == 2]  # fleet:run:<id>
    assert [k for k in records if broker.hget(k, "workflow") == "cyc"] == []


def test_submit_prints_result_and_trace(local_fleet: LocalFleet) -> None:
    res = fleet(
        "submit",
        "fleet/examples/triage.yaml",
        "--input",
        "ticket=My order is late, please cancel",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "succeeded"
    assert doc["outputs"]["urgent"] is True and doc["outputs"]["decision"].startswith("ESCALATE")
    ran = {e["node"]: e["class"] for e in doc["trace"] if e["status"] == "succeeded"}
    assert ran["lookup"] == "io" and ran["stats"] == "npu-lite" and ran["escalate"] == "gpu"
    assert ran["clean"] == "cpu"
    table = fleet("submit", "fleet/examples/triage.yaml", "-i", "ticket=thanks, all good")
    assert table.returncode == 0
    assert "routine" in table.stdout and "succeeded" in table.stdout and "npu-lite" in table.stdout
    narrow = fleet(
        "submit", "fleet/examples/triage.yaml", "-i", "ticket=hi", "--why", env={"COLUMNS": "100"}
    )
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.split("\nrun ")[0].splitlines()  # the trace; the result JSON follows
    assert lines[0].startswith("trace") and max(len(line) for line in lines) <= 100, narrow.stdout
    assert any(line.startswith("why clean -> cpu:") for line in lines), narrow.stdout


def test_submit_takes_inputs_from_a_file_and_a_policy_and_sla_per_run(
    local_fleet: LocalFleet, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"ticket": "My order is late, please cancel"}))
    args = ["submit", "fleet/examples/triage.yaml", "--inputs-json", str(inputs), "--json"]
    res = fleet(*args, "--policy", "cost-sla", "--sla", "20", "--priority", "9")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["outputs"]["urgent"] is True  # the file's ticket
    backend = redis.Redis.from_url(local_fleet.cfg.backend_url, decode_responses=True)
    meta = json.loads(backend.hget(f"fleet:run:{doc['run']}", "meta") or "{}")
    assert meta == {"priority": 9, "sla_s": 20.0, "policy": "cost-sla"}  # as the run keeps it
    routed = [e["route"] for e in doc["trace"] if e["route"]]
    assert routed and {r["policy"] for r in routed} == {"cost-sla"}
    # each step's budget is a share of this run's 20 s, not of default_sla_s (30 s)
    budgets = [r["estimates"]["budget_s"] for r in routed if "budget_s" in r["estimates"]]
    assert budgets and max(budgets) <= 20.0 and min(budgets) > 0
    other = json.loads(fleet(*args, "--policy", "least-latency").stdout)
    assert {e["route"]["policy"] for e in other["trace"] if e["route"]} == {"least-latency"}
    bad = fleet("submit", "fleet/examples/triage.yaml", "--inputs-json", str(tmp_path / "no"))
    assert bad.returncode == 2 and "no" in bad.stderr


def test_submit_failing_workflow_exits_1_naming_node(
    tmp_path: Path, local_fleet: LocalFleet
) -> None:
    wf = tmp_path / "fail.yaml"
    wf.write_text("name: f\nnodes:\n  - {name: boom, op: test.fail, params: {message: nope}}\n")
    res = fleet("submit", str(wf))
    assert res.returncode == 1
    assert "node 'boom'" in res.stderr and "nope" in res.stderr


def test_status_lists_workers_per_class(local_fleet: LocalFleet) -> None:
    res = fleet("status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for cls in ("gpu", "npu-lite", "cpu", "io"):
        assert len(doc[cls]["workers"]) == 1 and doc[cls]["depth"] == 0
    assert doc["tpu"]["workers"] == []


def test_worker_dry_run_shows_preset() -> None:
    res = fleet("worker", "io", "--dry-run")
    assert res.returncode == 0
    assert "-Q io -P threads -c 8" in res.stdout and "--prefetch-multiplier 1" in res.stdout
    assert fleet("worker", "quantum").returncode == 2
    # --device names a GPU the host has, for a class that binds to one (this host has none)
    res = fleet("worker", "gpu", "--device", "7", "--dry-run")
    assert res.returncode == 2 and "--device 7: no such GPU on this host" in res.stderr
    res = fleet("worker", "cpu", "--device", "0", "--dry-run")
    assert res.returncode == 2 and "class 'cpu' binds to the CPU" in res.stderr


def test_worker_dry_run_shows_a_process_per_runtime_where_gpus_are_laid_out() -> None:
    res = fleet("worker", "gpu", "--dry-run", env={"FLEET_ASSUME_CUDA": "1"})
    assert res.returncode == 0, res.stderr
    commands = [line for line in res.stdout.splitlines() if " -m celery " in line]
    assert len(commands) == 2
    assert "-Q gpu " in commands[0] and "-Q gpu.ctranslate2 " in commands[1]
    assert "lanes: a process per runtime on one GPU: llama.cpp (queue gpu), ctranslate2" in (
        res.stdout
    )
    one = fleet("worker", "gpu", "--dry-run", env={"FLEET_ASSUME_CUDA": ""})  # no GPU here
    assert one.returncode == 0 and "-Q gpu,gpu.ctranslate2 " in one.stdout
    assert "lanes:" not in one.stdout


@pytest.mark.slow
def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path, fleet_cfg: FleetConfig) -> None:
    url, port = f"redis://127.0.0.1:{free_port()}/0", free_port()
    up = ["up", "--flower-port", str(port), "--classes", "cpu,io", "--workdir", str(tmp_path)]
    proc = subprocess.Popen(
        [*FLEET, *up],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FLEET_BROKER_URL": url, "COLUMNS": "200"},
        cwd=ROOT,
    )
    out = read_until(proc, "fleet is up", 90)
    assert "fleet is up" in out, out
    assert "started redis-server" in out and "worker: cpu" in out and "worker: io" in out
    status = fleet("status", "--json", env={"FLEET_BROKER_URL": url})
    assert json.loads(status.stdout)["io"]["workers"]
    (auth,) = re.findall(rf"flower: http://127.0.0.1:{port}  basic auth (\S+):(\S+)", out)
    answered, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline and answered != 200:
        with contextlib.suppress(httpx.HTTPError):
            answered = httpx.get(f"http://127.0.0.1:{port}/api/workers", auth=auth).status_code
        time.sleep(0.5)
    assert answered == 200  # Flower on the port asked for, with the password printed
    while time.monotonic() < deadline and "submit with" not in out:
        out += proc.stdout.readline()
    assert f"submit with: fleet --broker {url} submit FILE" in out  # pastes as it is
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped." in rest
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


@pytest.mark.slow
@pytest.mark.timeout(660)  # the subprocess may take its 600 s
def test_demo_is_the_main_job(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = fleet("demo", "--workdir", str(tmp_path), env={"FLEET_BROKER_URL": url}, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "Your order 1042 (blender) is shipped." in out
    last = [line for line in out.splitlines() if line.startswith("run ")][-1]
    assert "succeeded" in last
    assert all(c in last for c in ("cpu", "gpu", "io", "npu-lite"))
    assert (tmp_path / "answer.wav").stat().st_size > 10_000


@pytest.mark.slow
def test_triage_demo(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = fleet("demo", "--triage", "--workdir", str(tmp_path), env={"FLEET_BROKER_URL": url})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded" in res.stdout and "ESCALATE" in res.stdout


def test_profile_measures_live_classes(local_fleet: LocalFleet, tmp_path: Path) -> None:
    out = tmp_path / "profiles.json"
    res = fleet("profile", "--ops", "text.normalize,test.sleep", "--reps", "1", "--save", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.read_text())["profiles"]
    got = {(r["op"], r["cls"]) for r in rows}
    # every class that can run each op and has a worker (tpu has none)
    assert ("test.sleep", "io") in got and ("text.normalize", "cpu") in got
    assert not any(cls == "tpu" for _, cls in got)
    sleep_io = next(r for r in rows if r["op"] == "test.sleep" and r["cls"] == "io")
    assert 0.8 < sleep_io["per_unit_s"] < 1.3  # seconds per second of sleep, fitted
    # gpu batches (a thread pool of 8): measured at occupancy too. Sleeps overlap in its
    # threads, so 8 at once go far faster than one at a time; io does not batch.
    sleep_gpu = next(r for r in rows if r["op"] == "test.sleep" and r["cls"] == "gpu")
    assert set(sleep_gpu["batch"]) == {"2", "4", "8"} and sleep_gpu["batch"]["8"] > 3
    assert sleep_io.get("batch") is None
    assert "wrote" in res.stdout
    bad = fleet("profile", "--ops", "llm.nothing")
    assert bad.returncode == 1 and "no representative inputs for op 'llm.nothing'" in bad.stderr


def test_trace_ops_and_schema_commands(local_fleet: LocalFleet) -> None:
    res = fleet("submit", "fleet/examples/triage.yaml", "-i", "ticket=hello", "--no-wait")
    run_id = res.stdout.strip()
    assert res.returncode == 0 and len(run_id) == 32
    traced = fleet("trace", run_id, "--json")
    assert traced.returncode == 0 and json.loads(traced.stdout)["status"] == "succeeded"
    listed = fleet("ops")
    assert "llm.generate" in listed.stdout and "speech.stt" in listed.stdout
    schema = json.loads(fleet("schema").stdout)
    assert "nodes" in schema["$defs"]["WorkflowSpec"]["properties"]
    unknown = fleet("trace", "f" * 32)
    assert unknown.returncode == 1 and "no run ffff" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_trace_with_the_broker_down_is_a_clear_error() -> None:
    down = fleet("trace", "abc", env={"FLEET_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "cannot reach the run store" in down.stderr
    assert "Traceback" not in down.stderr


@pytest.mark.slow
@pytest.mark.timeout(660)  # the subprocess may take its 600 s
def test_gpu_check_runs_on_a_cpu_host(tmp_path: Path, tiny_gguf: str) -> None:
    out = tmp_path / "check"
    res = fleet(
        "gpu-check",
        "--skip-build",
        "--no-profile",
        "--model",
        tiny_gguf,
        "--tokens",
        "8",
        "--out",
        str(out),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and report["pd"] == {"gpu->cpu": True, "cpu->gpu": True}
    assert report["gpus"] == [] and report["llama_gpu_build"] is False
    assert set(report["tokens_per_s"]) == {"gpu", "cpu"}
    assert "P/D gpu->cpu: same text" in res.stdout
    # Whisper heard the spoken order number on both classes
    assert set(report["stt"]) == {"gpu", "cpu"} and report["stt_note"] == ""
    assert all("1042" in text.replace(",", "") for text in report["stt"].values()), report


def test_submit_uploads_a_folder_and_saves_an_audio_output(
    tmp_path: Path, local_fleet: LocalFleet
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Returns\n\nReturns are free within 30 days.")
    (docs / "b.md").write_text("# Warranty\n\nTwo years on every blender.")
    (docs / "skip.txt").write_text("not markdown")
    wf = tmp_path / "read-aloud.yaml"
    wf.write_text(
        "name: read-aloud\ninputs: [docs]\nnodes:\n"
        "  - {name: load, op: memory.load_docs, inputs: {path: inputs.docs}}\n"
        "  - {name: speak, op: speech.tts, params: {text: two documents read}}\n"
        "outputs: {count: load.texts, audio: speak.audio}\n"
    )
    out = tmp_path / "out.wav"
    res = fleet("submit", str(wf), "--upload", f"docs={docs}", "--save", f"audio={out}", "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["outputs"]["count"]) == 2  # the two .md files
    assert out.read_bytes().startswith(b"RIFF") and f"saved audio to {out}" in res.stderr
    missing = fleet("submit", str(wf), "--upload", f"docs={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_trace_and_submit_render_a_run_in_any_state(
    local_fleet: LocalFleet, tmp_path: Path
) -> None:
    """A run still going is not a failure, an empty trace is not a crash, and the duration is
    the run's own (from submission), not how long the command waited. The step sleeps 15 s:
    the two early `fleet trace` calls start a Python process each, which takes seconds on a
    busy machine (a 3-s step had finished before the second one, beside stress-ng)."""
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        "name: slow\nnodes:\n  - {name: nap, op: test.sleep, classes: [io], "
        "params: {seconds: 15}}\noutputs: {slept: nap.slept}\n"
    )
    run_id = fleet("submit", str(slow), "--no-wait").stdout.strip()
    early = fleet("trace", run_id)
    assert early.returncode == 0, early.stdout + early.stderr
    assert f"run {run_id}: running for" in early.stdout
    assert "no step has finished yet" in early.stdout and "Traceback" not in early.stderr
    doc = json.loads(fleet("trace", run_id, "--json").stdout)
    assert doc["status"] == "running" and doc["error"] is None and doc["trace"] == []
    deadline = time.monotonic() + 120
    while doc["status"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
        done = fleet("trace", run_id, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(done.stdout)
    assert doc["status"] == "succeeded", doc
    assert doc["duration_s"] >= 15.0  # the run's, although trace itself did not wait
    impatient = fleet("submit", str(slow), "--timeout", "1")
    assert impatient.returncode == 1
    assert "not finished after 1 s of waiting" in " ".join(impatient.stderr.split())
    assert "running for" in impatient.stdout and "failed" not in impatient.stdout


def test_submit_and_status_with_the_broker_down_are_clear_and_keep_the_password() -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    for args in (["submit", "fleet/examples/triage.yaml", "-i", "ticket=x"], ["status"]):
        res = fleet(*args, env={"FLEET_BROKER_URL": url})
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and "s3cret-pw" not in res.stdout + res.stderr
        assert "redis://:****@127.0.0.1" in " ".join(res.stderr.split()), res.stderr


def test_compile_prints_the_levels_or_the_canvas(tmp_path: Path) -> None:
    triage = str(ROOT / "fleet" / "examples" / "triage.yaml")
    levels = fleet("compile", triage)
    assert levels.returncode == 0, levels.stderr
    assert "  1  stats: text.stats  reads clean  -> npu-lite" in levels.stdout
    canvas = fleet("compile", "--canvas", triage)
    assert canvas.returncode == 0, canvas.stderr
    lines = canvas.stdout.splitlines()
    assert lines[0] == "chain(" and lines[-1] == ")"
    assert lines[1].strip() == "fleet.canvas_start  [io]"
    assert (
        "  group(" in lines
        and "    fleet.node lookup: test.sleep (tool)  [io, cpu, npu-lite, gpu]" in lines
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - name: a\n    op: nope.op\n")
    res = fleet("compile", "--canvas", str(bad))
    assert res.returncode == 2 and "unknown op 'nope.op'" in res.stderr and not res.stdout


def test_plan_check_says_what_drifted(local_fleet: LocalFleet, tmp_path: Path) -> None:
    """A saved plan predicted 1000 runs/s of `check-me`: the fleet runs a few per second, so
    the rate drifted (exit 1) while the p95 held."""
    import threading

    from fleet import Workflow
    from fleet.client.client import Fleet

    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(
        '[predicted.workflows."check-me"]\nrate = 1000\np95_s = 2.0\nsla_s = 5.0\n'
    )
    wf = Workflow("check-me", inputs=["t"])
    wf.output("out", wf.step("up", "text.upper", text=wf.input("t"))["text"])
    client, done = Fleet(), threading.Event()

    def load() -> None:
        while not done.is_set():
            client.submit(wf, {"t": "x"}).get(timeout=30)
            time.sleep(0.1)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        res = fleet("plan", "--check", str(plan_file), "--window", "4")
    finally:
        done.set()
        worker.join(30)
    assert res.returncode == 1, res.stdout + res.stderr
    assert (
        "drifted: workflow check-me rate:" in res.stdout and "against 1000/s planned" in res.stdout
    )
    assert "drifted: workflow check-me p95" not in res.stdout
    missing = fleet("plan", "--check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
