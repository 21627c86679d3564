"""A remote model as a class the router may choose: an endpoint class (``endpoint = NAME``)
runs only what can run there, is priced at its endpoint's per-token prices, and competes
with the local model classes on the same estimates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.config import FleetConfig, load_config
from fleet.errors import ConfigError
from fleet.routing.estimate import RouteRequest, estimate
from fleet.routing.policies import CostSlaPolicy, LeastLatencyPolicy
from fleet.routing.profiles import OpProfile, ProfileStore
from fleet.routing.state import FleetState, WorkerInfo
from fleet.sdk.registry import registry

CONFIG = """
[endpoints.hosted]
base_url = "https://llm.example/v1"
price_in = 0.5
price_out = 2.0

[classes.llm-api]
pool = "threads"
concurrency = 64
endpoint = "hosted"
price_per_hour = 0.01
"""


@pytest.fixture(scope="module")
def remote_cfg(tmp_path_factory: pytest.TempPathFactory) -> FleetConfig:
    path = tmp_path_factory.mktemp("cfg") / "fleet.toml"
    path.write_text(CONFIG)
    cfg = load_config(path, env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    return cfg


def test_an_endpoint_class_names_a_configured_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[classes.llm-api]\nendpoint = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"classes.llm-api.endpoint: 'nowhere' is not in"):
        load_config(path, env={})


def test_only_generations_run_on_an_endpoint_class(remote_cfg: FleetConfig) -> None:
    generate = registry.get("llm.generate").eligible(remote_cfg.classes)
    assert generate[-1] == "llm-api" and "gpu" in generate  # after the local classes
    for op in ("text.upper", "llm.prefill", "speech.stt", "http.request"):
        assert "llm-api" not in registry.get(op).eligible(remote_cfg.classes), op


def _state(*live: str) -> FleetState:
    workers = {c: [WorkerInfo(f"{c}@h", (c,), 64, "threads", 1, 0.0, 0)] for c in live}
    return FleetState(workers, {}, {}, time.time())


def _store(cpu_s: float, api_s: float) -> ProfileStore:
    s = ProfileStore()
    s.put(OpProfile("llm.generate", "cpu", fixed_s=0.0, per_unit_s=cpu_s / 60))
    s.put(OpProfile("llm.generate", "llm-api", fixed_s=0.0, per_unit_s=api_s / 60))
    return s


def _req(**kw: object) -> RouteRequest:
    return RouteRequest(
        "fleet.step",
        "llm.generate",
        "model",
        ("cpu", "llm-api"),
        units=60,
        **kw,  # type: ignore[arg-type]
    )


def test_an_endpoint_steps_cost_is_its_tokens(remote_cfg: FleetConfig) -> None:
    est = estimate(_req(input_bytes=4000), "llm-api", _state("llm-api"), _store(2, 1), remote_cfg)
    tokens = 60 * 2.0 / 1e6 + 4000 / 4 * 0.5 / 1e6  # completion out + prompt in
    time_cost = 0.01 / 3600 * est.service_s
    assert est.cost == pytest.approx(tokens + time_cost)


def test_the_router_chooses_local_or_remote_from_the_estimates(remote_cfg: FleetConfig) -> None:
    live = _state("cpu", "llm-api")
    # the endpoint is faster: least-latency goes remote, and its reason says why
    fast_remote = _store(cpu_s=3.0, api_s=0.5)
    chosen = LeastLatencyPolicy().choose(_req(), live, remote_cfg, fast_remote)
    assert chosen.cls == "llm-api", chosen.reason
    # with time to spare under the SLA, cost-sla takes the cheaper: the local cpu class
    # (0.05 $/h for 3 s) against the endpoint's tokens
    roomy = _req(sla_left_s=30.0)
    chosen = CostSlaPolicy().choose(roomy, live, remote_cfg, fast_remote)
    assert chosen.cls == "cpu", chosen.reason
    # when only the endpoint makes the SLA, cost-sla pays for it
    tight = _req(sla_left_s=1.0)
    chosen = CostSlaPolicy().choose(tight, live, remote_cfg, fast_remote)
    assert chosen.cls == "llm-api", chosen.reason
    assert "llm-api" in chosen.estimates and "cpu" in chosen.estimates  # the trace's why


def test_the_endpoint_class_of_docs_operations_loads(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    block = text.split("```toml\n[endpoints.hosted]", 1)[1].split("```", 1)[0]
    path = tmp_path / "fleet.toml"
    path.write_text("[endpoints.hosted]" + block)
    cfg = load_config(path, env={})
    assert cfg.classes["llm-api"].endpoint == "hosted"
    assert cfg.endpoints["hosted"].api_key == "hosted" and cfg.endpoints["hosted"].extra
    assert registry.get("llm.generate").eligible(cfg.classes)[-1] == "llm-api"
