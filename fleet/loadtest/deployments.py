"""The deployments the benchmark compares on one machine: one homogeneous pool, static per-op
routes, and the least-latency and cost-sla policies over the heterogeneous classes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.config import ClassSpec, FleetConfig, default_classes, load_config


@dataclass(frozen=True)
class Deployment:
    name: str
    policy: str
    classes: dict[str, ClassSpec]
    description: str
    settings: dict[str, Any] = field(default_factory=dict)  # other FleetConfig fields


MODEL_CLASSES = ("gpu", "npu-lite", "cpu")


def deployments() -> list[Deployment]:
    hetero = default_classes()
    # Every class that may be given a model op loads the models at start: otherwise a policy
    # that spreads work would pay model loads inside the measurement.
    for name in MODEL_CLASSES:
        hetero[name] = hetero[name].model_copy(update={"preload": ["llm", "embed", "stt"]})
    compute_slots = sum(c.compute_processes for c in hetero.values())
    big = ClassSpec(
        name="cpu",
        description="one pool for every step (priced as the accelerator box)",
        pool="prefork",
        concurrency=compute_slots,
        time_limit=900,
        price_per_hour=hetero["gpu"].price_per_hour,
        preload=["llm", "embed", "stt"],
    )
    return [
        Deployment(
            "homogeneous",
            "static",
            {"cpu": big},
            f"every step on one prefork pool of {compute_slots} slots, priced as gpu",
        ),
        Deployment(
            "static", "static", hetero, "per-op task_routes: each op on its preferred class"
        ),
        Deployment("least-latency", "least-latency", hetero, "fleet policy least-latency"),
        Deployment("cost-sla", "cost-sla", hetero, "fleet policy cost-sla"),
    ]


def config_for(dep: Deployment, broker: str, data_dir: str) -> FleetConfig:
    base = load_config(env={})
    control = "io" if "io" in dep.classes else next(iter(dep.classes))
    return base.model_copy(
        update={
            "broker_url": broker,
            "result_backend": "",
            "classes": dep.classes,
            "control_class": control,
            "policy": dep.policy,
            "data_dir": data_dir,
            "heartbeat_interval": 0.5,
            "worker_ttl": 3.0,
            "state_ttl": 0.25,
            **dep.settings,
        }
    )


def write_config(cfg: FleetConfig, path: Path) -> None:
    """The deployment's configuration for its workers (classes it lacks are disabled)."""

    data = cfg.model_dump(mode="json")
    for name in default_classes():
        data["classes"].setdefault(name, {"enabled": False})
    path.write_text(json.dumps(data))  # YAML is a JSON superset
