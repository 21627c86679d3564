"""`fleet kube`: the manifests validate against Kubernetes' own schemas (kubernetes-validate,
strict: an unknown field fails) and KEDA's (cloudcoil's models of its CRDs, checked to keep
every field), carry no credential, and take each class's replica bounds from the config --
from a plan's saved config, the bounds the plan sized."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

from fleet.config import load_config
from fleet.deploy.kubernetes import KubeTarget, KubeValues, manifests, render
from fleet.paths import example
from fleet.planning import planner
from fleet.planning.catalogue import CATALOGUE, Catalogue
from fleet.planning.export import plan_toml
from fleet.planning.workload import load_workload

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "docker" / "kubernetes"
K8S_VERSION = "1.30.0"
KEDA_KINDS = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}


def _docs(config: Path | None = None, **target: Any) -> list[dict[str, Any]]:
    cfg = load_config(config, env={}) if config else load_config(env={})
    text = config.read_text() if config else None
    docs = manifests(cfg, KubeTarget(config_text=text, **target))
    loaded: list[dict[str, Any]] = list(yaml.safe_load_all(render(docs)))  # as kubectl reads
    return loaded


def _kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _validate(doc: dict[str, Any]) -> None:
    model = KEDA_KINDS.get(doc["kind"])
    if model is None:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    parsed = model.model_validate(doc)  # the CRD's types; then: no field was dropped
    back = _strip_none(parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    assert back == doc, f"{doc['kind']} {doc['metadata']['name']}: fields KEDA does not know"


def test_committed_manifests_are_what_fleet_kube_renders() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "--config", str(KUBE / "fleet.toml"), "kube"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (KUBE / "fleet.yaml").read_text(), (
        "re-render docker/kubernetes/fleet.yaml"
    )


@pytest.mark.parametrize("local", [False, True])
def test_every_resource_validates_against_its_schema(local: bool) -> None:
    docs = _docs(KUBE / "fleet.toml", local=local)
    for doc in docs:
        _validate(doc)
    assert {d["kind"] for d in docs} >= {"Deployment", "PersistentVolumeClaim", "ConfigMap"}


def test_the_validation_catches_a_wrong_field() -> None:
    # the check above is not vacuous: a misspelt field fails each schema
    deploy = _kinds(_docs(), "Deployment")["worker-cpu"]
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deploy)
    scaled = _kinds(_docs(), "ScaledObject")["worker-cpu"]
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(AssertionError, match="fields KEDA does not know"):
        _validate(scaled)


def test_one_worker_deployment_per_class_and_a_gpu_for_the_gpu_class() -> None:
    docs = _docs(KUBE / "fleet.toml")
    workers = {k: v for k, v in _kinds(docs, "Deployment").items() if k.startswith("worker-")}
    assert set(workers) == {"worker-gpu", "worker-npu-lite", "worker-cpu", "worker-io"}
    for name, deploy in workers.items():
        pod = deploy["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][:3] == ["fleet", "worker", name.removeprefix("worker-")]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert (gpus == "1") == (name == "worker-gpu"), name
        assert ("tolerations" in pod) == (name == "worker-gpu")
    gpu = workers["worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "agent-fleet:cuda"
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_no_credential_is_rendered_only_references_to_secrets() -> None:
    docs = _docs(KUBE / "fleet.toml")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for deploy in _kinds(docs, "Deployment").values():
        for container in deploy["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"] in ("FLEET_BROKER_URL", "FLOWER_BASIC_AUTH", "REDIS_PASSWORD"):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    flower = _kinds(docs, "Deployment")["flower"]["spec"]["template"]["spec"]["containers"][0]
    assert "FLOWER_BASIC_AUTH" in {e["name"] for e in flower["env"]}
    redis = _kinds(docs, "Deployment")["redis"]["spec"]["template"]["spec"]
    args = redis["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert "requirepass $REDIS_PASSWORD" in redis["containers"][0]["command"][2]
    assert redis["volumes"][0]["persistentVolumeClaim"]["claimName"] == "redis-data"
    trigger = _kinds(docs, "TriggerAuthentication")["fleet-redis"]["spec"]["secretTargetRef"]
    assert trigger == [{"parameter": "password", "name": "fleet-redis", "key": "password"}]


def test_a_config_with_a_password_in_it_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('broker_url = "redis://:hunter2@redis:6379/0"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "--config", str(config), "kube"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "broker_url holds a password" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('broker_url = "redis://redis:6379/0?password=hunter2"', "broker_url"),
        ('result_backend = "redis://redis:6379/1?password=hunter2"', "result_backend"),
        ('flower_auth = "admin:hunter2"', "flower_auth"),
        ('flower_broker_api = "http://admin:hunter2@rabbit:15672/api/"', "flower_broker_api"),
        (
            '[endpoints.llm]\nbase_url = "http://llm:8080/v1?api_key=hunter2"',
            "endpoints.llm.base_url",
        ),
    ],
)
def test_no_credential_of_the_config_reaches_the_config_map(
    tmp_path: Path, line: str, field: str
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(line + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "--config", str(config), "kube"],
        capture_output=True,
        text=True,
        env=env,
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and f"{field} holds a password" in said, said
    assert "Secret" in said or "api_key" in said
    assert "hunter2" not in done.stdout + done.stderr and "fleet-config" not in done.stdout


def test_the_secrets_each_setting_moves_to_are_referred_to() -> None:
    docs = _kinds(_docs(KUBE / "fleet.toml"), "Deployment")
    flower = docs["flower"]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in flower["env"] if "valueFrom" in e}
    assert refs["FLOWER_BROKER_API"] == {
        "name": "fleet-flower",
        "key": "FLOWER_BROKER_API",
        "optional": True,
    }
    worker = docs["worker-cpu"]["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"]: e for e in worker["env"]}
    assert names["FLEET_RESULT_BACKEND"]["valueFrom"]["secretKeyRef"]["name"] == "fleet-broker"


def test_metrics_are_annotated_for_prometheus() -> None:
    pod = _kinds(_docs(), "Deployment")["metrics"]["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == "9808"
    assert pod["spec"]["containers"][0]["command"][:2] == ["fleet", "metrics"]


def test_each_class_scales_on_its_queue_lists_within_a_plans_bounds(tmp_path: Path) -> None:
    cat = Catalogue.load(CATALOGUE)
    flows = load_workload(example("plans", "voice-20.yaml"), cat.splits)
    plan = planner.plan(flows, cat, 0.7, None)
    saved = tmp_path / "plan.toml"
    saved.write_text(plan_toml(plan, cat))
    docs = _docs(saved)
    scaled = _kinds(docs, "ScaledObject")
    hourly = {j: n for j, n in plan.workers.items() if n}
    # the plan sized classes by the hour, GPUs among them
    assert any(cat.devices[j].device == "cuda" for j in hourly), hourly
    for cls, n in hourly.items():
        spec = scaled[f"worker-{cls}"]["spec"]
        assert spec["maxReplicaCount"] == n and spec["minReplicaCount"] == 1, cls
        pod = _kinds(docs, "Deployment")[f"worker-{cls}"]["spec"]
        assert pod["replicas"] == n
        # a GPU device class of the catalogue gets a GPU, a CPU one none
        limits = pod["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        assert ("nvidia.com/gpu" in limits) == (cat.devices[cls].device == "cuda"), cls
        lists = [t["metadata"]["listName"] for t in spec["triggers"]]
        # kombu's priority sub-lists of the class queue, besides the queue itself
        assert lists == [cls, f"{cls}\x06\x163", f"{cls}\x06\x166", f"{cls}\x06\x169"]


def test_on_rabbitmq_a_class_scales_on_its_queue() -> None:
    cfg = load_config(env={"FLEET_BROKER_URL": "amqp://rabbit:5672//"})
    docs = manifests(cfg, KubeTarget())
    (trigger,) = _kinds(docs, "ScaledObject")["worker-io"]["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == "io"
    assert trigger["metadata"]["hostFromEnv"] == "FLEET_BROKER_URL"
    assert not _kinds(docs, "TriggerAuthentication")


def test_local_manifests_run_on_the_host_network_without_services_or_autoscalers() -> None:
    docs = _docs(local=True, redis_port=6390)
    assert {d["kind"] for d in docs} == {"Deployment", "PersistentVolumeClaim"}
    for deploy in _kinds(docs, "Deployment").values():
        assert deploy["spec"]["template"]["spec"]["hostNetwork"] is True
    args = _kinds(docs, "Deployment")["redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--bind", "127.0.0.1", "--port", "6390"]
    gpu = _kinds(docs, "Deployment")["worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "agent-fleet:cpu" and "tolerations" not in gpu


def test_values_place_a_class_and_a_wrong_value_is_named(tmp_path: Path) -> None:
    values = KubeValues.model_validate(
        {"image": "registry.example/fleet:1", "classes": {"cpu": {"nodeSelector": {"pool": "c"}}}}
    )
    docs = manifests(load_config(env={}), KubeTarget(values=values))
    cpu = _kinds(docs, "Deployment")["worker-cpu"]["spec"]["template"]["spec"]
    assert cpu["nodeSelector"] == {"pool": "c"}
    assert cpu["containers"][0]["image"] == "registry.example/fleet:1"
    bad = tmp_path / "values.yaml"
    bad.write_text("classes:\n  cpu:\n    nodeSelektor: {pool: c}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    argv = [sys.executable, "-m", "fleet.cli.main", "kube", "--values", str(bad)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())  # the message, as the terminal wrapped it
    assert f"{bad}: classes.cpu.nodeSelektor" in said and "Traceback" not in said
    bad.write_text("classes:\n  tpu: {}\n")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "['tpu'] are not in the fleet configuration" in said
