"""The fleet from containers, on this host: the CPU image built with podman, and Redis (its
data on a volume), one worker container per class, Flower and `fleet metrics` played with
`podman kube play` from `fleet kube --local`. A client outside the containers runs the voice
agent and the triage example through them; a worker container killed mid-step is restarted
and its step redelivered; a Redis container killed keeps a finished run's record.

The build, with the image's layers not yet cached, takes minutes: its figures are printed (and
recorded in docs/operations.md)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig, load_config
from fleet.deploy.local import free_port
from fleet.messaging.app import create_app
from fleet.paths import EXAMPLES
from fleet.routing.state import StateReader
from tests.support import containers
from tests.support.containers import CLASSES, Played
from tests.support.voice import ask_voice_agent, order_api_server

# the first build of the image takes minutes (its layers are cached afterwards)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _wait_for_workers(cfg: FleetConfig, classes: list[str], played: Played, timeout: float) -> None:
    reader = StateReader(cfg)
    deadline = time.monotonic() + timeout
    missing = classes
    while time.monotonic() < deadline:
        try:
            state = reader.read()
            missing = [c for c in classes if not state.live(c)]
        except redis.RedisError:
            pass  # Redis's container is still starting
        if not missing:
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {c}\n{played.logs(f'worker-{c}')}" for c in missing)
    raise AssertionError(f"no live worker for {missing} after {timeout:.0f} s\n{logs}")


@pytest.fixture(scope="module")
def played(
    tmp_path_factory: pytest.TempPathFactory, order_api: str
) -> Iterator[tuple[Fleet, Played, str]]:
    containers.need_podman()
    built = containers.build_images()
    print(f"\nimage {built.image}: {built.size_mb:.0f} MB, built in {built.seconds:.0f} s")
    # a rebuild leaves no untagged image behind (each is a few GB: the disk filled up once)
    left = containers.podman(
        "images", "-q", "--filter", "dangling=true", "--filter", "label=agent-fleet.image"
    )
    assert not left, f"untagged images left by the build: {left.split()}"
    folder = tmp_path_factory.mktemp("containers")
    port, flower_port, metrics_port = free_port(), free_port(), free_port()
    password, flower_auth = secrets.token_hex(12), f"admin:{secrets.token_hex(12)}"
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    config = folder / "fleet.toml"  # travels as the ConfigMap; quick to see a worker gone
    config.write_text(
        f"flower_port = {flower_port}\nmetrics_port = {metrics_port}\n"
        "heartbeat_interval = 0.5\nworker_ttl = 3.0\norphan_after_s = 4.0\n"
        f"http_allow = [{json.dumps(order_api)}]\n"  # the order API the test serves
    )
    values = folder / "values.yaml"
    values.write_text(f"image: {built.image}\nredisImage: {built.redis_image}\n")
    manifest = folder / "fleet-local.yaml"
    started = time.monotonic()
    fleet = containers.play_local(manifest, config, password, flower_auth, port, values)
    assert password not in manifest.read_text() and flower_auth not in manifest.read_text()
    try:
        cfg = load_config(config, env={}).model_copy(update={"broker_url": url})
        _wait_for_workers(cfg, CLASSES, fleet, timeout=240)
        print(f"played: a live worker in every class {time.monotonic() - started:.1f} s on")
        yield Fleet(app=create_app(cfg), cfg=cfg), fleet, flower_auth
    finally:
        fleet.down(volumes=True)


@pytest.fixture(scope="module")
def order_api() -> Iterator[str]:
    with order_api_server() as url:  # on the host's loopback (the containers share it)
        yield url


def _wait_until_active(client: Fleet, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = client.app.control.inspect(timeout=1.0).active() or {}
        for tasks in active.values():
            if any(t.get("kwargs", {}).get("call", {}).get("path") == node for t in tasks):
                return
        time.sleep(0.2)
    raise AssertionError(f"step {node} never became active")


def _workers(client: Fleet, run_id: str) -> dict[str, tuple[str | None, str | None]]:
    trace = client.store.trace(run_id)
    return {t.node: (t.cls, t.worker) for t in trace if t.status == "succeeded"}


def test_the_voice_agent_and_triage_run_through_the_containers(
    played: tuple[Fleet, Played, str], order_api: str, tmp_path: Path
) -> None:
    client = played[0]
    kb = client.submit(
        EXAMPLES / "kb_build.yaml", {"docs": client.upload(EXAMPLES / "kb"), "index": "kb-box"}
    )
    assert kb.get(timeout=300)["count"] >= 4
    run = ask_voice_agent(client, order_api, "kb-box", tmp_path)
    out = run.get(timeout=300)
    assert "1042" in out["question"].replace(",", "")  # whisper in the gpu container
    assert out["facts"] == "Your order 1042 (blender) is shipped."  # the tool call, from it
    assert out["answer"].startswith(out["facts"])
    assert client.download(out["audio"]).startswith(b"RIFF")  # espeak-ng in the image
    ran = _workers(client, run.id)
    # each step ran in its class's container: the worker is named <class>@<pod hostname>
    for node, cls in [("transcribe", "gpu"), ("embed_question", "npu-lite"), ("retrieve", "cpu")]:
        assert ran[node][0] == cls and (ran[node][1] or "").startswith(f"{cls}@"), ran[node]
    assert ran["tools#1/lookup"][0] == "io"
    ticket = "My blender arrived broken, refund please"  # 6 words, 2 of the urgent ones
    triage = client.submit(EXAMPLES / "triage.yaml", {"ticket": ticket}).get(timeout=120)
    assert triage["urgent"] is True
    assert triage["decision"].startswith("ESCALATE to a human: 6-word ticket")


def test_flower_asks_for_its_password_and_lists_the_class_workers(
    played: tuple[Fleet, Played, str],
) -> None:
    client, _, auth = played
    base = f"http://127.0.0.1:{client.cfg.flower_port}"
    deadline = time.monotonic() + 60
    while True:  # Flower starts beside the workers
        try:
            anonymous = httpx.get(f"{base}/api/workers", timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "Flower's container did not listen"
            time.sleep(1)
    assert anonymous.status_code == 401
    user, _, password = auth.partition(":")
    workers = httpx.get(f"{base}/api/workers?refresh=1", auth=(user, password), timeout=30)
    assert workers.status_code == 200
    names = set(workers.json())
    assert {n.split("@")[0] for n in names} >= set(CLASSES), names
    metrics = httpx.get(f"http://127.0.0.1:{client.cfg.metrics_port}/metrics", timeout=30)
    assert 'fleet_queue_depth{class="gpu"}' in metrics.text


def test_no_password_reaches_a_log_or_the_image(played: tuple[Fleet, Played, str]) -> None:
    client, fleet, auth = played
    password = client.cfg.broker_url.split(":")[2].split("@")[0]  # redis://:PASSWORD@host
    flower_password = auth.partition(":")[2]
    for name in ("redis", "flower", "metrics", *(f"worker-{c}" for c in CLASSES)):
        logs = fleet.logs(name, tail=100_000)
        assert logs.strip(), f"{name}: no logs to look in"
        assert password not in logs and flower_password not in logs, name
    history = containers.podman("image", "history", "--no-trunc", containers.IMAGE)
    env = containers.podman("image", "inspect", "--format", "{{.Config.Env}}", containers.IMAGE)
    assert "PASSWORD" not in history + env and "BASIC_AUTH" not in history + env


def test_a_killed_worker_container_restarts_and_its_step_is_redelivered(
    played: tuple[Fleet, Played, str],
) -> None:
    client, fleet, _ = played
    before = fleet.restarts("worker-cpu")
    wf = Workflow("long-cpu-step", inputs=["x"])
    nap = wf.step("nap", "test.sleep", seconds=6.0, value=wf.input("x"), classes=["cpu"])
    wf.output("value", nap["value"])
    run = client.submit(wf, {"x": 7})
    _wait_until_active(client, "nap")
    os.kill(fleet.pid("worker-cpu"), signal.SIGKILL)  # the worker's main process: a crash
    killed_at = time.time()
    assert run.get(timeout=180) == {"value": 7}  # redelivered, once its worker was seen gone
    trace = client.store.trace(run.id)
    naps = [t for t in trace if t.node == "nap" and t.status == "succeeded"]
    # it ran to the end once: in the restarted container, after the kill (same clock)
    assert len(naps) == 1 and naps[0].started_at >= killed_at, naps
    deadline = time.monotonic() + 60
    while fleet.restarts("worker-cpu") <= before:
        assert time.monotonic() < deadline, "podman did not restart the worker container"
        time.sleep(0.5)
    _wait_for_workers(client.cfg, ["cpu"], fleet, timeout=120)  # the new one beats again


def test_a_finished_run_survives_a_killed_redis_container(
    played: tuple[Fleet, Played, str],
) -> None:
    client, fleet, _ = played
    triage = client.submit(EXAMPLES / "triage.yaml", {"ticket": "where is my order"})
    done = triage.get(timeout=120)
    time.sleep(2.0)  # appendfsync everysec: the record reaches the disk within a second
    before = fleet.restarts("redis")
    os.kill(fleet.pid("redis"), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while fleet.restarts("redis") <= before:
        assert time.monotonic() < deadline, "podman did not restart the Redis container"
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while True:  # the same record, read back from the append-only file
        try:
            info = client.store.info(triage.id)
            break
        except redis.RedisError:
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.5)
    assert info is not None and info.status == "succeeded"
    assert triage.get(timeout=30) == done
    _wait_for_workers(client.cfg, CLASSES, fleet, timeout=120)  # the workers reconnected
    again = client.submit(EXAMPLES / "triage.yaml", {"ticket": "where is my order"})
    assert again.get(timeout=120) == done
