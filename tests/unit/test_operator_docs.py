"""The operator's part of issue 44, item 9: what README.md and docs/operations.md say runs as
written -- a values file for `fleet kube`, the standalone Flower command bound to loopback,
the Flower password shown once, a `celery:` step's problem with its file and line, and the
README's triage template reading as text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.client.registered import RegisteredTasks
from fleet.config import load_config
from fleet.deploy.kubernetes import KubeTarget, KubeValues, manifests
from fleet.deploy.local import FLOWER_AUTH_FILE, LocalFleet
from fleet.engine.compiler import compile_workflow
from fleet.errors import WorkflowValidationError
from fleet.sdk.registry import registry
from fleet.workflow.loader import load_workflow
from fleet.workflow.validate import validate

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
README = (ROOT / "README.md").read_text()


def test_the_values_file_operations_md_shows_places_its_classes() -> None:
    block = OPERATIONS.split("<!-- a values file -->\n```yaml\n", 1)[1].split("```", 1)[0]
    values = KubeValues.model_validate(yaml.safe_load(block))
    cfg = load_config(ROOT / "docker" / "kubernetes" / "fleet.toml", env={})
    docs = manifests(cfg, KubeTarget(values=values))
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    gpu, cpu = pods["worker-gpu"], pods["worker-cpu"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["containers"][0]["image"] == "registry.example/agent-fleet:cuda"
    assert cpu["containers"][0]["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert cpu["containers"][0]["image"] == "registry.example/agent-fleet:cpu"


def test_the_standalone_flower_command_listens_on_loopback() -> None:
    commands = re.findall(r"python -m fleet\.deploy\.flower[^`]*", OPERATIONS.replace("\n", " "))
    standalone = [c for c in commands if "--port" in c]
    assert standalone and all("--address=127.0.0.1" in c for c in standalone), standalone


def test_the_flower_password_is_shown_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(env={})
    said: list[str] = []
    monkeypatch.setattr(LocalFleet, "_spawn", lambda self, *a: None)
    first = LocalFleet(cfg, ["io"], workdir=tmp_path, say=said.append)
    first._start_flower()
    password = (tmp_path / FLOWER_AUTH_FILE).read_text().strip()
    assert password in said[-1]  # made now: shown, with where it is kept
    again = LocalFleet(cfg, ["io"], workdir=tmp_path, say=said.append)
    again._start_flower()
    assert again.flower_auth == password  # the next `fleet up` here asks for the same
    assert password not in said[-1] and "fleet:****" in said[-1] and FLOWER_AUTH_FILE in said[-1]


class _NoWorkers:
    def hvals(self, key: str) -> list[Any]:
        return []


def test_an_unregistered_celery_task_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    flow = tmp_path / "ocr.yaml"
    flow.write_text(
        "name: ocr\ninputs: [image]\nnodes:\n"
        "  - name: clean\n    op: text.normalize\n    inputs: {text: inputs.image}\n"
        "  - name: read\n    op: celery:proj.tasks.ocr\n    inputs: {image: clean.text}\n"
        "outputs: {text: read.result}\n"
    )
    cfg = load_config(env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    compiled = compile_workflow(load_workflow(flow), cfg, registry)
    with pytest.raises(WorkflowValidationError) as err:
        RegisteredTasks(_NoWorkers(), cfg.worker_ttl).check(compiled)  # type: ignore[arg-type]
    assert f"{flow}:7: node 'read': field 'op': no live worker" in str(err.value)


def test_the_readmes_triage_template_reads_as_text() -> None:
    from workers.ops.general import template

    block = README.split("## Workflow files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = yaml.safe_load(block)
    (escalate,) = [n for n in spec["nodes"] if n["name"] == "escalate"]
    out = template(escalate["params"]["template"], matched=["refund", "broken"])
    assert out == {"text": "ESCALATE: refund, broken"}


def test_a_loop_given_a_constant_the_wrong_way_is_told_the_right_one(tmp_path: Path) -> None:
    flow = tmp_path / "count.yaml"
    flow.write_text(
        "name: count\nnodes:\n  - name: rounds\n    params: {n: 0}\n    workflow:\n"
        "      name: round\n      inputs: [n]\n"
        "      nodes: [{name: add, op: math.add, inputs: {a: inputs.n}, params: {b: 1}}]\n"
        "      outputs: {n: add.result}\n"
        "    loop: {max_iterations: 5, until: 'add.result >= 3'}\n"
        "outputs: {n: rounds.n}\n"
    )
    cfg = load_config(env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    with pytest.raises(WorkflowValidationError) as err:
        validate(load_workflow(flow), cfg, registry)
    text = " ".join(str(err.value).split())
    assert "a constant in the sub-workflow's defaults: {n: ...}" in text
    assert "not 'params' (a constant input: the sub-workflow's defaults)" in text
