"""A command that starts a local fleet stops everything it started when it is told to stop
(SIGTERM, as `timeout` and `kill` send; SIGINT, as Ctrl-C does), at any moment: while the
fleet starts, and once it runs. Its Redis and its workers run in sessions of their own, so
nothing else would stop them: `timeout 15 fleet eval` left a Redis and eight workers
running. Every process the command started carries a token in its environment; none may be
left once the command has ended (Redis, which writes its title over its environment, is
known by its port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.deploy.local import free_port

QUESTIONS = """
voices:
  a: {voice: en-us, speed: 160}
questions:
  - {id: q1, kind: kb, voice: a, text: "How long do I have to return an item?", tool: false,
     source: returns, expect: [["30 days"]]}
"""


def _marked(token: bytes) -> dict[int, str]:
    """The live processes the command started: pid -> name (``token`` is the environment
    variable's value, and the Redis port)."""
    value, port = token.split(b":")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            ours = value in (entry / "environ").read_bytes()
            if ours or (name == "redis-server" and b":" + port in (entry / "cmdline").read_bytes()):
                found[int(entry.name)] = name
        except OSError:  # gone meanwhile
            continue
    return found


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str], s: float) -> None:
    deadline = time.monotonic() + s
    while not ready():
        assert proc.poll() is None, f"the command ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"not {what} after {s} s"
        time.sleep(0.05)


def _run(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], bytes]:
    token, port = uuid.uuid4().hex, free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FLEET_CONFIG",)}
    env.update(
        FLEET_BROKER_URL=f"redis://127.0.0.1:{port}/0",  # its own Redis, started by it
        FLEET_STOP_TEST=token,
        COLUMNS="200",
    )
    argv = [sys.executable, "-m", "fleet.cli.main", *args, "--workdir", str(tmp_path / "w")]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, f"{token}:{port}".encode()


def _stopped_everything(
    proc: subprocess.Popen[str], token: bytes, signum: int, again: int | None = None
) -> str:
    """Signal the command (``again``: a second signal while it stops); nothing it started
    may be left once it has ended."""
    started = {pid: name for pid, name in _marked(token).items() if pid != proc.pid}
    assert "redis-server" in started.values(), started
    proc.send_signal(signum)
    if again is not None:
        time.sleep(0.3)
        proc.send_signal(again)
    out, _ = proc.communicate(timeout=90)
    deadline = time.monotonic() + 5  # a worker's pool children follow their main process
    while _marked(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _marked(token)
    for pid in left:  # the test's own clean-up; the assertion below names them
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left running after {signal.Signals(signum).name}: {left}\n{out}"
    assert "Traceback" not in out, out
    return out


def _redis_runs(token: bytes) -> bool:
    return "redis-server" in _marked(token).values()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_its_fleet_while_it_starts_and_once_it_runs(tmp_path: Path, signum: int) -> None:
    up = ["up", "--classes", "io", "--no-flower"]
    proc, token = _run(up, tmp_path / "starting")
    _wait("its Redis runs", lambda: _redis_runs(token), proc, 30)
    _stopped_everything(proc, token, signum)  # the worker is still starting

    proc, token = _run(up, tmp_path / "running")
    assert proc.stdout is not None
    for line in proc.stdout:  # until it says it is up (the test's timeout bounds this)
        if "fleet is up" in line:
            break
    other = signal.SIGINT if signum == signal.SIGTERM else signal.SIGTERM
    out = _stopped_everything(proc, token, signum, again=other)  # impatient: twice
    assert "stopping the fleet" in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_eval_stops_its_fleet_and_its_order_api(tmp_path: Path, signum: int) -> None:
    questions = tmp_path / "questions.yaml"
    questions.write_text(QUESTIONS)
    proc, token = _run(["eval", "--questions", str(questions)], tmp_path)
    # its Redis, the order API and the workers of all four classes, starting
    started = lambda: len(_marked(token)) >= 7 and _redis_runs(token)  # noqa: E731
    _wait("its workers start", started, proc, 60)
    _stopped_everything(proc, token, signum)
