"""A fleet configuration as Kubernetes manifests (``fleet kube``).

One Deployment per hardware class (its image, resources, GPU, node selector and tolerations),
Redis with its data on a volume, Flower behind basic auth, ``fleet metrics`` annotated for
Prometheus to scrape, and a KEDA ``ScaledObject`` per class that scales its workers on the
class's queue length between the class's ``min_workers`` and ``max_workers`` -- the bounds a
plan writes (``fleet plan --save``). The configuration travels as a ConfigMap; credentials
only ever as references to Secrets the operator creates (docs/operations.md), never as values.
Every pod runs as the "restricted" Pod Security Standard asks, behind NetworkPolicies
(kube_security.py says what and why).

``local=True`` renders the same fleet for ``podman kube play`` on one host: host networking on
loopback, no Services or autoscaler (podman has neither), the same Secrets (as podman secrets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fleet.config import ClassSpec, FleetConfig
from fleet.constants import AMQP_SCHEMES
from fleet.deploy.kube_security import (
    APP_LABEL,
    BROKER_SECRET,
    FLEET_UID,
    FLOWER_SECRET,
    PART_LABEL,
    REDIS_SECRET,
    REDIS_UID,
    harden,
    network_policies,
    secret_env,
)
from fleet.errors import ConfigError
from fleet.routing.depth import PRIORITY_SEP, PRIORITY_STEPS

Doc = dict[str, Any]

CONFIG_MAP = "fleet-config"
CONFIG_PATH = "/etc/fleet/fleet.toml"
DATA_DIR = "/var/lib/fleet"
REDIS_START = 'exec redis-server - "$@" <<EOF\nrequirepass $REDIS_PASSWORD\nEOF\n'
GPU_RESOURCE = "nvidia.com/gpu"


class ClassValues(BaseModel):
    """Per-class overrides of what the class's settings imply."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[dict[str, Any]] | None = None
    resources: dict[str, dict[str, str]] | None = None
    image: str | None = None


class KubeValues(BaseModel):
    """``fleet kube --values FILE``: images, storage and per-class placement."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    image: str = "agent-fleet:cpu"
    gpu_image: str = Field(default="agent-fleet:cuda", alias="gpuImage")
    redis_image: str = Field(default="redis:7.4", alias="redisImage")
    redis_storage: str = Field(default="8Gi", alias="redisStorage")
    classes: dict[str, ClassValues] = Field(default_factory=dict)


@dataclass(frozen=True)
class KubeTarget:
    """Where the manifests go: a cluster, or one host through podman (``local``)."""

    values: KubeValues = field(default_factory=KubeValues)
    config_text: str | None = None  # the fleet config file, carried as a ConfigMap
    local: bool = False
    redis_port: int = 6379  # local: the port Redis listens on, on the host's loopback


def manifests(cfg: FleetConfig, target: KubeTarget) -> list[Doc]:
    """Every resource, in the order ``kubectl apply -f`` wants them."""
    unknown = sorted(set(target.values.classes) - set(cfg.classes))
    if unknown:
        raise ConfigError(f"values: classes {unknown} are not in the fleet configuration")
    docs: list[Doc] = []
    if target.config_text is not None:
        docs.append(_config_map(target.config_text))
    docs += _redis(target)
    for spec in cfg.classes.values():
        docs.append(_worker(spec, cfg, target))
    docs += _flower(cfg, target) + _metrics(cfg, target)
    if not target.local:
        docs += _autoscalers(cfg, target) + network_policies(cfg)
    return docs


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's file) as literal blocks, as a person writes them;
    no anchors and aliases where two resources share a value."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(docs: list[Doc]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100)


def _name(cls: str) -> str:
    """The Deployment of class ``cls`` (an RFC 1123 name)."""
    name = re.sub(r"[^a-z0-9-]+", "-", cls.lower()).strip("-")
    return f"worker-{name}"


def _meta(name: str, part: str, **extra: Any) -> Doc:
    return {"name": name, "labels": {APP_LABEL: "agent-fleet", PART_LABEL: part}, **extra}


def _deployment(name: str, part: str, pod: Doc, replicas: int = 1, **spec: Any) -> Doc:
    labels = {APP_LABEL: "agent-fleet", PART_LABEL: part}
    template_meta: Doc = {"labels": labels, **pod.pop("_meta", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, part),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            **spec,
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def _service(name: str, part: str, port: int) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, part),
        "spec": {
            "selector": {APP_LABEL: "agent-fleet", PART_LABEL: part},
            "ports": [{"name": part, "port": port, "targetPort": port}],
        },
    }


def _fleet_env(target: KubeTarget) -> list[Doc]:
    env = [secret_env("FLEET_BROKER_URL", BROKER_SECRET, "FLEET_BROKER_URL")]
    if not target.local:  # optional keys (podman's kube play is given only what it needs)
        env.append(secret_env("FLEET_RESULT_BACKEND", BROKER_SECRET, "FLEET_RESULT_BACKEND", True))
    env.append({"name": "FLEET_DATA_DIR", "value": DATA_DIR})
    if target.config_text is not None:
        env.append({"name": "FLEET_CONFIG", "value": CONFIG_PATH})
    return env


def _pod(
    target: KubeTarget, containers: list[Doc], volumes: list[Doc], uid: int = FLEET_UID, **spec: Any
) -> Doc:
    pod: Doc = {"containers": containers, **spec}
    if target.local:  # podman maps no ports on the host network: each listens there itself
        pod["hostNetwork"] = True
        for c in containers:
            c.pop("ports", None)
    if target.config_text is not None and any(c.get("_fleet") for c in containers):
        volumes = [*volumes, {"name": "config", "configMap": {"name": CONFIG_MAP}}]
        for c in containers:
            c.setdefault("volumeMounts", []).append(
                {"name": "config", "mountPath": "/etc/fleet", "readOnly": True}
            )
    for c in containers:
        c.pop("_fleet", None)
    if volumes:
        pod["volumes"] = volumes
    if not target.local:  # podman: on the host network, outside every restricted pod
        harden(pod, uid)
    return pod


def _config_map(text: str) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CONFIG_MAP, "config"),
        "data": {"fleet.toml": text},
    }


def _redis(target: KubeTarget) -> list[Doc]:
    args = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", "/data"]
    if target.local:
        args += ["--bind", "127.0.0.1", "--port", str(target.redis_port)]
    container = {
        "name": "redis",
        "image": target.values.redis_image,
        # the password from the Secret's variable through a config on standard input: not
        # in the command line (ps), and no $(VAR) expansion needed (podman has none)
        "command": ["sh", "-c", REDIS_START, "redis-server"],
        "args": args,
        "env": [secret_env("REDIS_PASSWORD", REDIS_SECRET, "password")],
        "ports": [{"containerPort": 6379}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": _sized(target, cpu=("250m", "1"), memory=("512Mi", "1Gi")),
    }
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "redis-data"}}]
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("redis-data", "redis"),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": target.values.redis_storage}},
        },
    }
    # one Redis: a second replica would be a second, empty broker (Recreate, not rolling)
    pod = _pod(target, [container], volumes, uid=REDIS_UID)  # its image's own user
    deploy = _deployment("redis", "redis", pod, strategy={"type": "Recreate"})
    docs = [claim, deploy]
    if not target.local:
        docs.append(_service("redis", "redis", 6379))
    return docs


def _sized(target: KubeTarget, cpu: tuple[str, str], memory: tuple[str, str]) -> Doc:
    """Requests and, on a cluster, limits (each pair: request, limit); podman on one host
    gets the requests alone, as before (a rootless podman may not set limits)."""
    sized: Doc = {"requests": {"cpu": cpu[0], "memory": memory[0]}}
    if not target.local:
        sized["limits"] = {"cpu": cpu[1], "memory": memory[1]}
    return sized


def _resources(spec: ClassSpec) -> dict[str, dict[str, str]]:
    """What one worker of the class asks for: a core and 2 GiB per computing process (the
    models), a quarter core for an I/O class; a GPU for a CUDA class."""
    procs = spec.compute_processes
    cpu = f"{procs}" if procs else "250m"
    memory = f"{2 * procs + 1}Gi" if procs else "1Gi"
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    if spec.device == "cuda":
        resources["limits"][GPU_RESOURCE] = "1"
    return resources


def _worker(spec: ClassSpec, cfg: FleetConfig, target: KubeTarget) -> Doc:
    values = target.values.classes.get(spec.name, ClassValues())
    gpu = spec.device == "cuda" and not target.local
    image = values.image or (target.values.gpu_image if gpu else target.values.image)
    name = _name(spec.name)
    ping = f"celery -A fleet inspect ping -d {spec.name}@$HOSTNAME -t 10 | grep -q pong"
    container: Doc = {
        "name": "worker",
        "image": image,
        "command": ["fleet", "worker", spec.name, "-n", f"{spec.name}@%h"],
        "env": _fleet_env(target),
        "resources": values.resources or _resources(spec),
        "_fleet": True,
    }
    if not target.local:  # podman runs no probes of a played Deployment
        container["livenessProbe"] = {
            "exec": {"command": ["sh", "-c", ping]},
            "initialDelaySeconds": 120,  # model loads
            "periodSeconds": 60,
            "timeoutSeconds": 20,
            "failureThreshold": 3,
        }
    # this worker's cache of models and indexes: not shared data, so not a claim (podman
    # would make one named volume of it for every worker: there the image's anonymous one)
    volumes: list[Doc] = []
    if not target.local:
        volumes.append({"name": "cache", "emptyDir": {}})
        container["volumeMounts"] = [{"name": "cache", "mountPath": DATA_DIR}]
    extra: Doc = {
        # SIGTERM is Celery's warm shutdown: the steps in flight finish first (acks_late:
        # a worker killed past this is redelivered)
        "terminationGracePeriodSeconds": int(spec.time_limit or 60) + 30,
    }
    selector = values.node_selector
    tolerations = values.tolerations
    if gpu:
        selector = selector if selector is not None else {"nvidia.com/gpu.present": "true"}
        if tolerations is None:
            tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if selector:
        extra["nodeSelector"] = selector
    if tolerations:
        extra["tolerations"] = tolerations
    pod = _pod(target, [container], volumes, **extra)
    return _deployment(name, f"worker-{spec.name}", pod, replicas=spec.workers)


def _flower(cfg: FleetConfig, target: KubeTarget) -> list[Doc]:
    address = "127.0.0.1" if target.local else "0.0.0.0"
    container: Doc = {
        "name": "flower",
        "image": target.values.image,
        "command": ["python", "-m", "fleet.deploy.flower"],
        "args": [f"--port={cfg.flower_port}", f"--address={address}"],
        "env": [
            *_fleet_env(target),
            secret_env("FLOWER_BASIC_AUTH", FLOWER_SECRET, "FLOWER_BASIC_AUTH"),
        ],
        "ports": [{"containerPort": cfg.flower_port}],
        "resources": _sized(target, cpu=("250m", "1"), memory=("512Mi", "512Mi")),
        "_fleet": True,
    }
    if not target.local:
        api = secret_env("FLOWER_BROKER_API", FLOWER_SECRET, "FLOWER_BROKER_API", True)
        container["env"].append(api)
    docs = [_deployment("flower", "flower", _pod(target, [container], []))]
    if not target.local:
        docs.append(_service("flower", "flower", cfg.flower_port))
    return docs


def _metrics(cfg: FleetConfig, target: KubeTarget) -> list[Doc]:
    address = "127.0.0.1" if target.local else "0.0.0.0"
    port = cfg.metrics_port
    container: Doc = {
        "name": "metrics",
        "image": target.values.image,
        "command": ["fleet", "metrics", "--address", address, "--port", str(port)],
        "env": _fleet_env(target),
        "ports": [{"containerPort": port, "name": "metrics"}],
        "resources": _sized(target, cpu=("100m", "500m"), memory=("256Mi", "256Mi")),
        "_fleet": True,
    }
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)}
    pod = _pod(target, [container], [])
    pod["_meta"] = {"annotations": {**scrape, "prometheus.io/path": "/metrics"}}
    docs = [_deployment("metrics", "metrics", pod)]
    if not target.local:
        docs.append(_service("metrics", "metrics", port))
    return docs


def bounds(spec: ClassSpec) -> tuple[int, int]:
    """The class's replica bounds: ``min_workers``..``max_workers`` (``workers`` when unset;
    a plan's saved config sets both to what it sized)."""
    high = max(spec.max_workers or spec.workers, spec.workers)
    return min(spec.min_workers, high), high


def _autoscalers(cfg: FleetConfig, target: KubeTarget) -> list[Doc]:
    amqp = cfg.broker_url.startswith(AMQP_SCHEMES)
    docs: list[Doc] = []
    if not amqp:
        docs.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "TriggerAuthentication",
                "metadata": _meta("fleet-redis", "autoscaler"),
                "spec": {
                    "secretTargetRef": [
                        {"parameter": "password", "name": REDIS_SECRET, "key": "password"}
                    ]
                },
            }
        )
    for spec in cfg.classes.values():
        low, high = bounds(spec)
        # a worker's slots' worth of waiting steps per replica (KEDA: ceil(length / target))
        per_replica = str(max(1, spec.concurrency))
        # a class with lanes (one pod runs them all): a trigger per lane's queue too
        triggers = [t for q in spec.queues for t in _triggers(q, per_replica, amqp)]
        docs.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": _meta(_name(spec.name), f"worker-{spec.name}"),
                "spec": {
                    "scaleTargetRef": {"name": _name(spec.name)},
                    "minReplicaCount": low,
                    "maxReplicaCount": high,
                    "pollingInterval": max(1, math.ceil(cfg.autoscale.interval_s)),
                    "cooldownPeriod": max(1, math.ceil(cfg.autoscale.down_idle_s)),
                    "triggers": triggers,
                },
            }
        )
    return docs


def _triggers(queue: str, per_replica: str, amqp: bool) -> Iterator[Doc]:
    if amqp:  # one queue holds every priority; the broker URL is the workers' own
        meta = {"queueName": queue, "mode": "QueueLength", "value": per_replica}
        yield {"type": "rabbitmq", "metadata": {**meta, "hostFromEnv": "FLEET_BROKER_URL"}}
        return
    # kombu keeps a Redis queue's priority levels in lists of their own: one trigger each
    # (KEDA scales to the largest of them)
    for key in [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)]:
        meta = {"address": "redis:6379", "listName": key, "listLength": per_replica}
        yield {
            "type": "redis",
            "metadata": {**meta, "databaseIndex": "0"},
            "authenticationRef": {"name": "fleet-redis"},
        }
