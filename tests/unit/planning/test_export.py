"""A plan's fleet serves every workflow it can and refuses the rest (issue 44, operator part):
its config holds exactly the plan's classes -- no built-in class without a worker for a step
to wait on for ever -- each with the pool its device needs, and `fleet kube` renders exactly
those classes with requests that fit them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleet.cli.main import cli
from fleet.config import FleetConfig, default_classes, load_config
from fleet.deploy.kubernetes import KubeTarget, manifests
from fleet.errors import WorkflowValidationError
from fleet.paths import EXAMPLES, example
from fleet.planning import planner
from fleet.planning.catalogue import CATALOGUE, Catalogue
from fleet.planning.export import plan_toml, pool
from fleet.planning.workload import load_workload
from fleet.sdk.registry import registry
from fleet.workflow.loader import load_workflow
from fleet.workflow.validate import validate

ROOT = Path(__file__).resolve().parents[3]


def _validate(flow: Path, cfg: FleetConfig) -> None:
    """What `fleet validate` and `fleet submit` check, under the plan's config."""
    registry.load(cfg.op_modules, cfg.op_plugins)
    validate(load_workflow(flow), cfg, registry)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    cat = Catalogue.load(CATALOGUE)
    flows = load_workload(example("plans", "voice-20.yaml"), cat.splits)
    plan = planner.plan(flows, cat)
    out = tmp_path_factory.mktemp("plan") / "plan.toml"
    out.write_text(plan_toml(plan, cat))
    return out, plan.used()


def test_the_config_holds_exactly_the_plans_classes(saved: tuple[Path, list[str]]) -> None:
    path, used = saved
    cfg = load_config(env={"FLEET_CONFIG": str(path)})
    assert sorted(cfg.classes) == sorted(used)  # gpu, npu-lite, cpu, io: left out
    assert not set(default_classes()) & set(cfg.classes)
    assert cfg.control_class in used


def test_a_planned_class_has_the_pool_its_device_needs(saved: tuple[Path, list[str]]) -> None:
    path, used = saved
    cfg = load_config(env={"FLEET_CONFIG": str(path)})
    assert "io-32" in used and cfg.classes["io-32"].pool == "threads"  # 32 waits, 1 process
    assert cfg.classes["io-32"].compute_processes == 0
    cat = Catalogue.load(CATALOGUE)
    assert pool(cat.devices["cpu-2"]) == "prefork" and pool(cat.devices["a100"]) == "prefork"
    batching = cat.devices["a100"].model_copy(update={"batches": True})
    assert pool(batching) == "threads"  # its slots are one process's batch
    stated = cat.devices["cpu-2"].model_copy(update={"pool": "solo"})
    assert pool(stated) == "solo"


@pytest.mark.parametrize("flow", ["triage.yaml", "kb_build.yaml", "rag.yaml"])
def test_the_readmes_workflows_run_on_the_planned_classes(
    saved: tuple[Path, list[str]], flow: str
) -> None:
    """Under the plan's config the README's workflows validate: their ops' built-in
    classes are served by planned ones (cpu-2 serves cpu, a100 gpu, io-32 io)."""
    path, _ = saved
    _validate(EXAMPLES / flow, load_config(env={"FLEET_CONFIG": str(path)}))


def test_a_workflow_no_planned_class_can_run_is_refused_not_left_waiting(
    tmp_path: Path,
) -> None:
    """A plan of an I/O pool alone: a workflow with an embedding step has no class to run
    it on, and is refused at validation (as at submit), naming the node and the op."""
    cat = Catalogue.load(CATALOGUE)
    (tmp_path / "fetch.yaml").write_text(
        "name: fetch\ninputs: [url]\nnodes:\n"
        "  - {name: get, op: http.request, inputs: {url: inputs.url}}\n"
        "outputs: {body: get.body}\n"
    )
    (tmp_path / "load.yaml").write_text(
        "workflows:\n  - {file: fetch.yaml, rate: 5, sla_p95_s: 2}\n"
    )
    plan = planner.plan(load_workload(tmp_path / "load.yaml", cat.splits), cat)
    assert plan.used() == ["io-32"]
    (tmp_path / "plan.toml").write_text(plan_toml(plan, cat))
    cfg = load_config(env={"FLEET_CONFIG": str(tmp_path / "plan.toml")})
    with pytest.raises(WorkflowValidationError) as err:
        _validate(EXAMPLES / "kb_build.yaml", cfg)
    assert "node 'embed': no configured class can run op embed.texts" in str(err.value)
    assert "configured: io-32" in str(err.value)


def test_kube_renders_exactly_the_plans_classes(saved: tuple[Path, list[str]]) -> None:
    path, used = saved
    cfg = load_config(env={"FLEET_CONFIG": str(path)})
    docs = manifests(cfg, KubeTarget())
    workers = {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("worker-")
    }
    assert sorted(workers) == sorted(f"worker-{j}" for j in used)
    io = workers["worker-io-32"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert io["requests"] == {"cpu": "250m", "memory": "1Gi"}  # threads: no 32 processes


def test_the_plan_and_kube_commands_operations_md_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md, "The autoscaler's bounds from a plan": both commands as written,
    in a folder of their own (the packaged examples linked in), and the manifests hold
    exactly the plan's worker classes."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = "```bash\nfleet plan fleet/examples/plans/voice-20.yaml"
    block = text[text.index(start) + len("```bash\n") :].split("```", 1)[0]
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines()]
    (tmp_path / "fleet").symlink_to(ROOT / "fleet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEET_CONFIG", raising=False)
    for argv in commands:
        assert argv[0] == "fleet"
        res = CliRunner().invoke(cli, argv[1:])
        assert res.exit_code == 0, (argv, res.output)
    planned = load_config(tmp_path / "plan.toml", env={})
    docs = list(yaml.safe_load_all((tmp_path / "fleet.yaml").read_text()))
    workers = {
        d["metadata"]["name"]
        for d in docs
        if d and d["kind"] == "Deployment" and d["metadata"]["name"].startswith("worker-")
    }
    assert workers == {f"worker-{j}" for j in planned.classes}
