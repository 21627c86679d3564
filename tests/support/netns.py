"""Hosts on one machine for the tests: Linux network namespaces joined by a bridge.

Each host is a network namespace with its own address (a veth on the bridge), and every
process started on it also gets its own hostname (UTS namespace) and a private, empty tmpfs
over the folder that holds the tests' temporary files (pytest's base folder, in its own mount
namespace): its HOME and data dir live there, where no other host sees them, and the
client's files there are hidden from it -- no shared filesystem for what the fleet writes.
(Not /tmp as a whole: the checkout and its .venv may live there.) The test process itself is
the client, on the bridge's address.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# what each host's processes run first: its name, a private tmpfs over the hidden folder,
# a HOME and data dir there
_HOST_SHELL = (
    'hostname "$FLEET_TEST_HOST" && mount -t tmpfs -o size=8g tmpfs "$FLEET_TEST_HIDDEN" && '
    'mkdir -p "$HOME" "$FLEET_DATA_DIR" && exec "$@"'
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def namespaces_refused() -> str | None:
    """Why this machine cannot make test hosts, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"flprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private", "true"]
        subprocess.run(unshare, check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        return f"the kernel refused network or mount namespaces here: {detail}"
    return None


@dataclass
class Host:
    name: str
    ns: str
    address: str
    hidden: Path  # covered by this host's own tmpfs
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        return {
            **env,
            "FLEET_TEST_HOST": self.name,
            "FLEET_TEST_HIDDEN": str(self.hidden),
            "HOME": str(self.hidden / "home"),
            "FLEET_DATA_DIR": str(self.hidden / "data"),
        }

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Run ``argv`` on this host: its network, hostname and private files."""
        env = self._env(env)
        full = ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts"]
        full += ["--propagation", "private", "sh", "-c", _HOST_SHELL, "host", *argv]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                full, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a short command on this host and return its result."""
        env = self._env(dict(os.environ))
        full = ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts"]
        full += ["--propagation", "private", "sh", "-c", _HOST_SHELL, "host", *argv]
        return subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Network:
    """A bridge on 10.<a>.<b>.0/24: the client at .254, hosts from .1 up. ``hidden``: the
    folder each host covers with its own tmpfs (it must not hold the code the hosts run)."""

    hidden: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.tag, 16)
        self.prefix = f"10.{100 + n % 100}.{n % 250}"
        self.bridge = f"flb{self.tag}"
        self.client_address = f"{self.prefix}.254"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        i = len(self.hosts) + 1
        ns, outside, inside = f"fl{self.tag}{i}", f"fv{self.tag}{i}", f"fh{self.tag}{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge, "up")
        address = f"{self.prefix}.{i}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(name, ns, address, self.hidden)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in host.procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.ns)  # its veth goes with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)
