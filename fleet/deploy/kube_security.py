"""What keeps the fleet ``fleet kube`` renders safe (its manifests: kubernetes.py).

- **Credentials** travel only in Secrets the operator creates; a configuration that would
  carry one into the ``fleet-config`` ConfigMap is refused (:func:`check_no_credentials`).
- **Every pod** passes the Pod Security Standard "restricted": not root (the images' own
  users), no privilege escalation, every capability dropped, the runtime's seccomp
  profile; besides, a read-only root filesystem (``/tmp`` is an emptyDir) and no
  service-account token (nothing here calls the Kubernetes API) (:func:`harden`).
- **NetworkPolicies**: no ingress to any fleet pod but Redis (from the fleet's own pods,
  clients labelled ``agent-fleet/client: "true"`` and the KEDA operator), Flower (from pods
  labelled ``agent-fleet/flower: "true"``) and the metrics (from pods labelled
  ``agent-fleet/scrape: "true"``: Prometheus). Egress stays open: workers call the APIs
  their workflows name, and ``http.request``'s allowlist is the guard there.

``fleet kube --local`` (podman on one host, its host network) gets none of the pod
hardening or policies: podman has no NetworkPolicy, and host networking is outside every
restricted pod.
"""

from __future__ import annotations

from typing import Any

from fleet.config import FleetConfig, url_secrets
from fleet.errors import ConfigError

Doc = dict[str, Any]

# The Secrets the manifests refer to (created by the operator, never rendered here).
BROKER_SECRET = "fleet-broker"  # key FLEET_BROKER_URL: the workers' broker URL, password in it
# (and, optional, FLEET_RESULT_BACKEND: a result backend apart from the broker, with its own)
REDIS_SECRET = "fleet-redis"  # key password: the in-cluster Redis's password
FLOWER_SECRET = "fleet-flower"  # key FLOWER_BASIC_AUTH: "user:password"
# (and, optional, FLOWER_BROKER_API: RabbitMQ's management API URL, credentials in it)
# Where each setting that may carry a credential goes instead of the ConfigMap.
SECRET_HOMES = {
    "broker_url": f"the {BROKER_SECRET} Secret, key FLEET_BROKER_URL",
    "result_backend": f"the {BROKER_SECRET} Secret, key FLEET_RESULT_BACKEND",
    "flower_auth": f"the {FLOWER_SECRET} Secret, key FLOWER_BASIC_AUTH",
    "flower_broker_api": f"the {FLOWER_SECRET} Secret, key FLOWER_BROKER_API",
}

FLEET_UID = 10001  # the agent-fleet images' user (docker/Dockerfile, Dockerfile.cuda)
REDIS_UID = 999  # the redis image's `redis` user
APP_LABEL = "app.kubernetes.io/name"
PART_LABEL = "app.kubernetes.io/component"
CLIENT_LABEL = "agent-fleet/client"  # "true" on a client's pods: they may reach Redis
FLOWER_LABEL = "agent-fleet/flower"  # "true": may reach Flower
SCRAPE_LABEL = "agent-fleet/scrape"  # "true" (Prometheus): may reach the metrics


def check_no_credentials(own: FleetConfig, source: str) -> None:
    """Refuse a configuration file that holds a credential: it would travel as the
    ``fleet-config`` ConfigMap, which is not a Secret (anyone who may read the namespace's
    ConfigMaps reads it). ``own`` is the file alone, without the environment."""
    found = [
        f"{name} holds a password ({', '.join(where)}): put it in {SECRET_HOMES[name]}"
        for name in ("broker_url", "result_backend", "flower_broker_api")
        if (where := url_secrets(getattr(own, name)))
    ]
    if own.flower_auth:
        found.append(f"flower_auth holds a password: put it in {SECRET_HOMES['flower_auth']}")
    found += [
        f"endpoints.{name}.base_url holds a password ({', '.join(where)}): give the "
        "endpoint's key by the name of a secret (api_key)"
        for name, spec in own.endpoints.items()
        if (where := url_secrets(spec.base_url))
    ]
    if found:
        raise ConfigError(f"{source}: " + "; ".join(found))


def secret_env(name: str, secret: str, key: str, optional: bool = False) -> Doc:
    ref: Doc = {"name": secret, "key": key, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def harden(pod: Doc, uid: int) -> None:
    """Make ``pod`` (a pod spec) one the "restricted" Pod Security Standard admits, run as
    ``uid`` (its image's user; ``fsGroup`` makes its volumes writable to it), with a
    read-only root filesystem and no service-account token."""
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["volumes"] = [*pod.get("volumes", []), {"name": "tmp", "emptyDir": {}}]
    for container in pod["containers"]:
        if uid == FLEET_UID:  # what libraries cache under $HOME/.cache goes to /tmp instead
            cache = {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"}
            container["env"] = [*container.get("env", []), cache]
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = container.setdefault("volumeMounts", [])
        mounts.append({"name": "tmp", "mountPath": "/tmp"})


def _policy(name: str, part: str | None, ingress: list[Doc]) -> Doc:
    selector = {APP_LABEL: "agent-fleet", **({PART_LABEL: part} if part else {})}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {APP_LABEL: "agent-fleet", PART_LABEL: "policy"}},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            **({"ingress": ingress} if ingress else {}),
        },
    }


def _from(port: int, *peers: Doc) -> Doc:
    return {"from": list(peers), "ports": [{"protocol": "TCP", "port": port}]}


def _labelled(label: str, value: str = "true") -> Doc:
    """Pods with ``label``, in any namespace."""
    return {"namespaceSelector": {}, "podSelector": {"matchLabels": {label: value}}}


def network_policies(cfg: FleetConfig) -> list[Doc]:
    """No ingress to a fleet pod but what each part serves, to whom it serves it."""
    fleet = {"podSelector": {"matchLabels": {APP_LABEL: "agent-fleet"}}}
    keda = _labelled(APP_LABEL, "keda-operator")
    return [
        _policy("fleet-deny-ingress", None, []),  # workers: no one; the rest: below
        _policy("fleet-redis", "redis", [_from(6379, fleet, _labelled(CLIENT_LABEL), keda)]),
        _policy("fleet-flower", "flower", [_from(cfg.flower_port, _labelled(FLOWER_LABEL))]),
        _policy("fleet-metrics", "metrics", [_from(cfg.metrics_port, _labelled(SCRAPE_LABEL))]),
    ]
