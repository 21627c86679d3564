"""Real servers for the tests (RabbitMQ, PostgreSQL, Prometheus), from Debian's packages.

Each starts on free ports in its own temporary folder and stops with the test session.
`scripts/test.sh` installs the packages and sets FLEET_TEST_REQUIRE_SERVICES=1, so that in CI
a missing server fails the run; elsewhere a missing package skips the tests that need it,
saying which package to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.deploy.local import free_port


def need(binary: str, package: str) -> str:
    """The binary's path; fail (CI) or skip (elsewhere) with the package to install."""
    path = shutil.which(binary) or (binary if os.access(binary, os.X_OK) else None)
    if path is None:
        why = f"{binary} is not installed (apt-get install -y {package})"
        if os.environ.get("FLEET_TEST_REQUIRE_SERVICES"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def start(
    name: str,
    argv: list[str],
    folder: Path,
    port: int,
    env: dict[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 60.0,
    user: str | None = None,
) -> Server:
    """Start ``argv`` in its own session and wait until ``ready`` (default: the port answers)."""
    log = folder / f"{name}.log"
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, log, port)
    check = ready or (lambda: port_open(port))
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"{name} did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.2)
    return server


def start_rabbitmq(folder: Path, ports: tuple[int, int, int] | None = None) -> Server:
    """A RabbitMQ node on free ports -- or on ``ports`` (amqp, dist, epmd) and the same data
    folder: the node restarted, with its durable queues."""
    binary = need("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server")
    port, dist, epmd = ports or (free_port(), free_port(), free_port())
    node = f"fleet{port}@localhost"
    env = {
        "HOME": str(folder),  # the Erlang cookie
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "ERL_EPMD_PORT": str(epmd),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
    }
    # The last thing it does is open the AMQP port: the broker is up when it answers.
    server = start("rabbitmq", [binary], folder, port, env, timeout=90)
    server.extra.update(dist=str(dist), epmd=str(epmd))
    return server


def start_prometheus(folder: Path, targets: list[str], interval: str = "1s") -> Server:
    """Prometheus scraping ``targets`` (host:port) every ``interval``; query it at .url."""
    binary = need("prometheus", "prometheus")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        f"scrape_configs:\n  - job_name: fleet\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    server = start("prometheus", argv, folder, port, timeout=60)
    server.extra["url"] = f"http://127.0.0.1:{port}"
    return server


def start_postgres(folder: Path, port: int | None = None) -> Server:
    """A PostgreSQL cluster of its own (initdb), on a free port and a private socket folder.
    As root, it runs as the ``postgres`` user (PostgreSQL refuses to run as root). The
    superuser ``postgres`` logs in without a password over 127.0.0.1 (trust, this test only)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = need(str(found[-1]) if found else "initdb", "postgresql")
    bindir = Path(initdb).parent
    user = "postgres" if os.geteuid() == 0 else None
    if user is not None:  # pytest's folders are root's alone (0700): one postgres can enter
        folder = Path(tempfile.mkdtemp(prefix="fleet-test-pg-"))
        shutil.chown(folder, user)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if user is not None:
        shutil.chown(sockets, user)
    argv = [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stderr or done.stdout}")
    port = port or free_port()
    argv = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(sockets),
        "-c",
        "listen_addresses=127.0.0.1",
    ]
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def ready() -> bool:  # the port opens before the server accepts logins
        import psycopg

        try:
            psycopg.connect(url, connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    server = start("postgres", argv, folder, port, ready=ready, timeout=60, user=user)
    server.extra["url"] = url
    return server


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """What ``proc`` printed up to the line with ``marker`` (or its end, or ``timeout``
    seconds): `fleet up` says "fleet is up" once every class has a live worker."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if marker in line or not line:
            break
    return "".join(lines)
