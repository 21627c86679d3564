"""A real Prometheus server scrapes `fleet metrics` and answers queries for queue depth and
per-workflow latency; every query of the shipped Grafana dashboard parses and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.deploy.local import LocalFleet, free_port
from tests.support.servers import Server, port_open, start_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "fleet.json"


@pytest.fixture(scope="module")
def exporter(local_fleet: LocalFleet) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "fleet.cli.main", "metrics", "--port", str(port)]
    proc = subprocess.Popen(argv, env=dict(os.environ), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_open(port):
        assert proc.poll() is None and time.monotonic() < deadline, "fleet metrics did not start"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def prometheus(exporter: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{exporter}"])
    yield server
    server.stop()


def query(server: Server, promql: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{server.extra['url']}/api/v1/query", params={"query": promql}, timeout=10)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def until(server: Server, promql: str, ok: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(server, promql)
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_depth_and_workflow_latency(client: Fleet, prometheus: Server) -> None:
    wf = Workflow("prom-check", inputs=["t"])
    a = wf.step("a", "test.sleep", seconds=0.2, value=wf.input("t"))
    wf.output("v", a["value"])
    runs = [client.submit(wf, {"t": i}, sla_s=30) for i in range(3)]
    runs.append(client.submit(wf, {"t": 9}, sla_s=0.05))  # cannot make it: one SLA miss
    for run in runs:
        run.get(timeout=30)

    depth = until(prometheus, 'fleet_queue_depth{class="gpu"}', bool)
    assert depth and depth[0]["value"][1] == "0"
    labels = '{workflow="prom-check"}'
    count = until(prometheus, f"fleet_workflow_seconds_count{labels}", lambda r: _value(r) == 4)
    assert count and count[0]["value"][1] == "4", count
    p95 = query(
        prometheus, f"histogram_quantile(0.95, sum by (le) (fleet_workflow_seconds_bucket{labels}))"
    )
    assert 0.2 <= float(p95[0]["value"][1]) <= 5.0, p95  # each run sleeps 0.2 s
    (ok,) = query(prometheus, 'fleet_workflow_runs_total{workflow="prom-check",status="succeeded"}')
    assert ok["value"][1] == "4"
    (sla,) = query(prometheus, f"fleet_workflow_sla_runs_total{labels}")
    (miss,) = query(prometheus, f"fleet_workflow_sla_misses_total{labels}")
    assert (sla["value"][1], miss["value"][1]) == ("4", "1")
    (cost,) = query(prometheus, f"fleet_workflow_cost_dollars_total{labels}")
    assert float(cost["value"][1]) > 0  # 4 x 0.2 s at the class's price


def test_grafana_dashboard_is_valid_and_its_queries_run(prometheus: Server) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 36 and dash["panels"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "workflow"}
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Queue depth", "Busy slots", "p95", "SLA attainment", "Cost per hour"):
        assert any(needed in t for t in titles), needed
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            # what Grafana substitutes before sending the query
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$workflow", ".*")
            # Prometheus parsed and ran it, and it shows something: the first test's runs
            # (a minute ago at most) and the live classes are in every panel
            assert query(prometheus, expr), (panel["title"], expr)


def test_the_dashboards_sla_panel_counts_a_workflows_first_miss(
    client: Fleet, prometheus: Server
) -> None:
    """A miss that is its workflow's first used to start the misses series at 1, which
    rate() drops: five runs on time and one late read as 100 % attainment."""
    name = f"prom-first-miss-{time.monotonic_ns() % 10**6}"  # a workflow new to the exporter
    wf = Workflow(name, inputs=["t"])
    wf.output("v", wf.step("a", "test.sleep", seconds=0.2, value=wf.input("t"))["value"])
    for i in range(5):
        client.submit(wf, {"t": i}, sla_s=30).get(timeout=30)
    labels = f'{{workflow="{name}"}}'
    done = until(prometheus, f"fleet_workflow_sla_runs_total{labels}", lambda r: _value(r) == 5)
    assert _value(done) == 5, done
    client.submit(wf, {"t": 9}, sla_s=0.05).get(timeout=30)  # late: the first miss
    done = until(prometheus, f"fleet_workflow_sla_misses_total{labels}", lambda r: _value(r) == 1)
    assert _value(done) == 1, done
    dash = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dash["panels"] if "SLA attainment" in p["title"]]
    expr = panel["targets"][0]["expr"].replace("$__rate_interval", "5m")
    expr = expr.replace("$workflow", name)
    (attained,) = query(prometheus, expr)
    assert 0.7 <= float(attained["value"][1]) <= 0.9, attained  # 5 of 6: 0.83


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None
