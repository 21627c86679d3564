"""Commands that deploy a fleet elsewhere: ``fleet kube`` (Kubernetes manifests)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from pydantic import ValidationError

from fleet.cli.common import config, fail
from fleet.config import load_config
from fleet.errors import ConfigError


@click.command()
@click.option(
    "--values",
    "values_file",
    type=click.Path(dir_okay=False, exists=True),
    help="YAML: image, gpuImage, redisImage, redisStorage, and per class nodeSelector, "
    "tolerations, resources, image.",
)
@click.option(
    "--local",
    is_flag=True,
    help="For `podman kube play` on this host: host network on loopback, no Services or "
    "autoscalers.",
)
@click.option("--redis-port", default=6379, help="With --local: the port Redis listens on.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here, not to standard output."
)
@click.pass_context
def kube(
    ctx: click.Context,
    values_file: str | None,
    local: bool,
    redis_port: int,
    output: str | None,
) -> None:
    """Print the fleet as Kubernetes manifests: a Deployment per class, Redis on a volume,
    Flower behind basic auth, `fleet metrics` for Prometheus, and a KEDA ScaledObject per class
    scaling its workers on its queue between the class's min_workers and max_workers.

    The fleet configuration (--config, e.g. a plan saved by `fleet plan --save`) goes in as a
    ConfigMap; its classes, their sizes and replica bounds come from it. Credentials come
    from Secrets you create (fleet-broker, fleet-redis, fleet-flower: docs/operations.md).
    """
    from fleet.deploy.kube_security import check_no_credentials
    from fleet.deploy.kubernetes import KubeTarget, KubeValues, manifests, render
    from fleet.workflow.loader import load_data_file

    cfg = config(ctx)
    text = None
    path = os.environ.get("FLEET_CONFIG")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
            own = load_config(path, env={})  # the file alone: what the ConfigMap would carry
            check_no_credentials(own, path)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            fail(str(exc), 2)
    try:  # read as a workflow file is: bounded, UTF-8, an alias bomb refused
        raw = load_data_file(values_file, ConfigError) if values_file else {}
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        values = KubeValues.model_validate(raw or {})
        target = KubeTarget(values=values, config_text=text, local=local, redis_port=redis_port)
        docs = render(manifests(cfg, target))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"{values_file}: {where}: {first['msg']}", 2)
    except ConfigError as exc:
        fail(f"{values_file or 'fleet kube'}: {exc}", 2)
    if output:
        Path(output).write_text(docs)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(docs, nl=False)
