"""One fleet across four hosts on this machine (network namespaces, see tests/support/netns.py):
Redis on "broker"; io and cpu workers on "edge"; npu-lite and gpu workers on "accel"; the
client (this test) on the bridge. No host sees another's files or the client's: documents and
the spoken question go in by reference, the spoken answer comes back by reference, the index
is an artifact. The knowledge-base build, the RAG example and the voice agent run across them,
and every step ran on the host that serves its class."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.deploy.launch import native_threads
from fleet.deploy.local import broker_reachable
from fleet.messaging.app import create_app
from fleet.routing.state import StateReader
from tests.support.netns import Network, namespaces_refused
from tests.support.voice import ask_voice_agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "fleet" / "examples"
PLACES = {"edge": ["io", "cpu"], "accel": ["npu-lite", "gpu"]}
HOST_OF = {cls: host for host, classes in PLACES.items() for cls in classes}


def _order_api(address: str) -> Any:
    spec = importlib.util.spec_from_file_location("shop_api", EXAMPLES / "shop_api.py")
    assert spec is not None and spec.loader is not None
    shop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shop)
    db = shop.create_db(Path(tempfile.mkdtemp()) / "shop.sqlite")
    server = shop.serve(0, db, address)  # on the client's address: the edge host calls it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _cannot(why: str) -> None:
    """These tests are the only proof that no worker reads the client's disk: where the CI
    asks for every capability (FLEET_TEST_REQUIRE_SERVICES), a missing one fails the run."""
    if os.environ.get("FLEET_TEST_REQUIRE_SERVICES"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def hosts(
    fleet_cfg: FleetConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Network, Fleet, str]]:
    refused = namespaces_refused()
    if refused:
        _cannot(f"no test hosts on this machine: {refused}")
    logs = tmp_path_factory.mktemp("netns-logs")
    # every host hides all of pytest's temporary folders (the client's files among them)
    hidden = tmp_path_factory.getbasetemp().parent
    for needed in (Path(sys.prefix), EXAMPLES):  # what the hosts run must stay visible
        if needed.resolve().is_relative_to(hidden.resolve()):
            _cannot(f"{needed} is inside {hidden}, which the test hosts hide")
    net = Network(hidden)
    try:
        broker = net.add_host("broker")
        url = f"redis://{broker.address}:6379/0"
        redis_argv = ["redis-server", "--bind", broker.address, "--port", "6379"]
        redis_argv += [
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(hidden),
        ]
        broker.start(redis_argv, dict(os.environ), logs / "redis.log")
        deadline = time.monotonic() + 15
        while not broker_reachable(url, timeout=0.3):
            assert time.monotonic() < deadline, (logs / "redis.log").read_text()
            time.sleep(0.1)
        api = _order_api(net.client_address)
        api_url = f"http://{net.client_address}:{api.server_address[1]}"
        env = {**os.environ, "FLEET_BROKER_URL": url, "FLEET_RESULT_BACKEND": url}
        env["FLEET_HTTP_ALLOW"] = f"{net.client_address}:{api.server_address[1]}"
        env.pop("FLEET_FILE_ROOTS", None)
        for name, classes in PLACES.items():
            host = net.add_host(name)
            for cls in classes:
                argv = [sys.executable, "-m", "fleet.cli.main", "worker", cls, "-l", "INFO"]
                host.start(argv, env, logs / f"{name}-{cls}.log")
        cfg = fleet_cfg.model_copy(update={"broker_url": url, "result_backend": url})
        reader = StateReader(cfg)
        deadline = time.monotonic() + 120
        while not all(reader.read().workers.get(c) for c in HOST_OF):
            if time.monotonic() > deadline:
                found = {c: len(w) for c, w in reader.read().workers.items()}
                pytest.fail(f"workers did not come up on their hosts: {found}; logs in {logs}")
            time.sleep(0.5)
        yield net, Fleet(app=create_app(cfg), cfg=cfg), api_url
        api.shutdown()
    finally:
        net.close()


def _check_hosts(run: Any) -> dict[str, str]:
    """node -> class of every step that ran; each ran on the host serving its class."""
    ran = {e.node: e for e in run.trace() if e.status == "succeeded"}
    for node, e in ran.items():
        assert e.worker is not None and e.cls is not None, node
        assert e.worker.endswith(f"@{HOST_OF[e.cls]}"), (node, e.cls, e.worker)
    return {node: e.cls or "" for node, e in ran.items()}


def test_workers_know_their_host_and_size_threads_by_its_classes(
    hosts: tuple[Network, Fleet, str],
) -> None:
    _, client, _ = hosts
    state = StateReader(client.cfg).read()
    for cls, host in HOST_OF.items():
        (worker,) = state.workers[cls]
        assert worker.hostname.endswith(f"@{host}")
        spec = client.cfg.classes[cls]
        info = client.store.redis.hget("fleet:worker-info", worker.hostname)
        assert (
            info is not None
            and f'"threads": {native_threads(spec, os.cpu_count() or 1, False)}' in info
        )


def test_no_host_sees_the_client_files(hosts: tuple[Network, Fleet, str], tmp_path: Path) -> None:
    net, _, _ = hosts
    secret = tmp_path / "client-only.txt"
    secret.write_text("the client's disk")
    seen = net.hosts["edge"].run(["cat", str(secret)])
    assert seen.returncode != 0 and "No such file" in seen.stderr


def test_kb_rag_and_voice_agent_across_hosts(
    hosts: tuple[Network, Fleet, str], tmp_path: Path
) -> None:
    _, client, api_url = hosts
    kb = client.submit(
        EXAMPLES / "kb_build.yaml", {"docs": client.upload(EXAMPLES / "kb"), "index": "net-kb"}
    )
    assert kb.get(timeout=300)["count"] >= 4
    assert _check_hosts(kb) == {"load": "io", "embed": "npu-lite", "store": "cpu"}

    rag = client.submit(
        EXAMPLES / "rag.yaml",
        {"question": "Can I return a kettle after three weeks?", "index": "net-kb"},
    )
    out = rag.get(timeout=300)
    assert out["sources"] and any(s.startswith("returns") for s in out["sources"])
    assert out["answer"].startswith("According to our records,")  # the example's own prefix
    assert len(out["answer"].removeprefix("According to our records,").split()) >= 4, out
    classes = _check_hosts(rag)
    assert classes["answer"] == "gpu" and classes["retrieve"] == "cpu"

    voice = ask_voice_agent(client, api_url, "net-kb", tmp_path)
    said = voice.get(timeout=300)
    assert "1042" in said["question"].replace(",", "")
    assert said["facts"] == "Your order 1042 (blender) is shipped."  # edge called the client's API
    classes = _check_hosts(voice)
    assert classes["transcribe"] == "gpu" and classes["tools#1/lookup"] == "io"
    assert classes["tools#1/call"] == "gpu" and classes["quote"] == "cpu"
    answer = tmp_path / "answer.wav"
    client.download(said["audio"], answer)
    assert answer.read_bytes().startswith(b"RIFF")
