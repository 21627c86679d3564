"""`fleet kube` renders pods the Pod Security Standard "restricted" admits (its rules, as
Kubernetes 1.30's pod-security admission checks them, written out below), with a read-only
root filesystem, no service-account token and memory limits, behind NetworkPolicies that let
no one but the fleet's own pods, labelled clients and KEDA reach Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.config import load_config
from fleet.deploy.kubernetes import KubeTarget, manifests

KUBE = Path(__file__).resolve().parents[3] / "docker" / "kubernetes"
Doc = dict[str, Any]

# Pod Security Standards, https://kubernetes.io/docs/concepts/security/pod-security-standards/
BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SELINUX_TYPES = {
    None,
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}


def _caps(c: Doc) -> Doc:
    return dict(c.get("securityContext", {}).get("capabilities", {}))


def _set(c: Doc, pod: Doc, key: str) -> Any:
    """A container's security setting, else its pod's."""
    return c.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


# (what is refused, whether container ``c`` of ``pod`` does it)
CONTAINER_RULES: list[tuple[str, Callable[[Doc, Doc], bool]]] = [
    ("privileged", lambda c, pod: bool(_set(c, {}, "privileged"))),
    (
        "allowPrivilegeEscalation is not false",
        lambda c, pod: _set(c, {}, "allowPrivilegeEscalation") is not False,
    ),
    ("runAsNonRoot is not true", lambda c, pod: _set(c, pod, "runAsNonRoot") is not True),
    ("runAsUser 0", lambda c, pod: 0 in (_set(c, {}, "runAsUser"), _set({}, pod, "runAsUser"))),
    (
        "seccompProfile is not RuntimeDefault or Localhost",
        lambda c, pod: (
            (_set(c, pod, "seccompProfile") or {}).get("type")
            not in ("RuntimeDefault", "Localhost")
        ),
    ),
    ("capabilities do not drop ALL", lambda c, pod: "ALL" not in _caps(c).get("drop", [])),
    (
        "capabilities added",
        lambda c, pod: not set(_caps(c).get("add", [])) <= {"NET_BIND_SERVICE"} & BASELINE_CAPS,
    ),
    ("hostPort", lambda c, pod: any(p.get("hostPort") for p in c.get("ports", []))),
    ("procMount", lambda c, pod: _set(c, {}, "procMount") not in (None, "Default")),
    (
        "seLinuxOptions",
        lambda c, pod: (
            (s := _set(c, pod, "seLinuxOptions") or {}).get("type") not in SELINUX_TYPES
            or bool(s.get("user") or s.get("role"))
        ),
    ),
]


def restricted_violations(pod: Doc) -> list[str]:
    """What in ``pod`` (a pod spec) the "restricted" level refuses (baseline's rules too)."""
    bad = [key for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: {sorted(set(volume) - {'name'})}")
    sysctls = pod.get("securityContext", {}).get("sysctls", [])
    bad += [f"sysctl {s['name']}" for s in sysctls if s["name"] not in SAFE_SYSCTLS]
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        bad += [f"{c['name']}: {rule}" for rule, breaks in CONTAINER_RULES if breaks(c, pod)]
    return bad


def _cluster_docs() -> list[Doc]:
    cfg = load_config(KUBE / "fleet.toml", env={})
    return manifests(cfg, KubeTarget(config_text=(KUBE / "fleet.toml").read_text()))


def _pods(docs: list[Doc]) -> dict[str, Doc]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }


def test_every_pod_passes_the_restricted_pod_security_standard() -> None:
    pods = _pods(_cluster_docs())
    assert {"redis", "flower", "metrics", "worker-cpu", "worker-gpu"} <= set(pods)
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, name
            assert c["resources"]["limits"]["memory"], name
    # each image's own user: redis's for Redis (no root entrypoint to drop it), fleet's else
    assert pods["redis"]["securityContext"]["runAsUser"] == 999
    assert pods["worker-cpu"]["securityContext"]["runAsUser"] == 10001


def test_the_checker_refuses_what_the_standard_refuses() -> None:
    root = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True, "runAsUser": 0}}],
    }
    found = " ".join(restricted_violations(root))
    for rule in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsUser 0",
                 "runAsNonRoot", "seccompProfile", "drop ALL"):  # fmt: skip
        assert rule in found, rule


def test_only_the_fleet_its_clients_and_keda_reach_redis() -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in _cluster_docs() if d["kind"] == "NetworkPolicy"
    }
    deny = policies["fleet-deny-ingress"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "agent-fleet"}
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny  # workers: no one
    (redis,) = policies["fleet-redis"]["ingress"]
    assert redis["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = [p["podSelector"]["matchLabels"] for p in redis["from"]]
    assert peers == [
        {"app.kubernetes.io/name": "agent-fleet"},
        {"agent-fleet/client": "true"},
        {"app.kubernetes.io/name": "keda-operator"},
    ]
    for name, label in (
        ("fleet-flower", "agent-fleet/flower"),
        ("fleet-metrics", "agent-fleet/scrape"),
    ):
        (rule,) = policies[name]["ingress"]
        assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [{label: "true"}]
