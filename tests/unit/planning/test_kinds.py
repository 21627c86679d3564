"""Request kinds (issue 44): an op with different speeds per kind of request on each device,
checked on the worked example of docs/planning.md (fleet/examples/plans/kinds.*: the toy
example of Melange's solver, two GPUs rented by the hour) against a brute-force search."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli.main import cli
from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import plan
from fleet.planning.predict import Plan
from fleet.planning.simulate import simulate
from fleet.planning.sizing import sized
from fleet.planning.workload import WorkflowLoad, load_workload

PLANS = Path(__file__).resolve().parents[3] / "fleet" / "examples" / "plans"
CATALOGUE, WORKLOAD = PLANS / "kinds.toml", PLANS / "kinds.yaml"
# Melange's toy example: max throughput (requests/s) per bucket, its cost per hour
THROUGHPUT = {
    "a10g": {"k00": 5, "k01": 1, "k10": 10, "k11": 5},
    "a100": {"k00": 20, "k01": 2, "k10": 50, "k11": 20},
}
PRICE = {"a10g": 1.01, "a100": 3.67}
RATES = {"k00": 4.0, "k01": 2.0, "k10": 6.0, "k11": 4.0}  # 16/s x [[.25, .125], [.375, .25]]


def _flows(cat: Catalogue, k01_sla: float = 10.0) -> list[WorkflowLoad]:
    flows = load_workload(WORKLOAD, cat.splits)
    return [replace(f, sla_s=k01_sla) if f.name == "k01" else f for f in flows]


def brute_force(flows: list[WorkflowLoad], cat: Catalogue, ceiling: float) -> Plan:
    """Every assignment of the four kinds to the two GPUs, each sized by the same queueing
    estimates; the cheapest."""
    found = []
    for where in itertools.product(cat.devices, repeat=len(flows)):
        choice = {f.name: j for f, j in zip(flows, where, strict=True)}
        try:
            found.append(sized(flows, cat, lambda f, s, c=choice: c[f.name], ceiling))
        except ConfigError:
            continue
    return min(found, key=lambda p: p.cost_per_hour)


def test_the_catalogue_states_the_published_figures() -> None:
    cat = Catalogue.load(CATALOGUE)
    flows = {f.name: f for f in load_workload(WORKLOAD, cat.splits)}
    assert {n: f.rate for n, f in flows.items()} == RATES
    for j, speeds in THROUGHPUT.items():
        assert cat.devices[j].price_per_hour == pytest.approx(PRICE[j])
        for kind, per_s in speeds.items():
            (step,) = flows[kind].steps()
            assert step.units == 1  # a step that is not an LLM split counts one unit
            assert cat.step_time(j, step.op, step.units, kind) == pytest.approx(1 / per_s)
    # without a kind, a rule with figures per kind only has none: the op cannot run there
    assert cat.latency("a10g", "llm.generate") is None


@pytest.mark.parametrize(
    ("ceiling", "k01_sla", "fleet", "cost"),
    [
        (0.7, 10.0, {"a10g": 6}, 6.06),  # loose SLAs: capacity binds, all on the cheap GPU
        (1.0, 10.0, {"a10g": 5}, 5.05),  # GPUs allowed to fill up, as Melange packs them
        (0.7, 0.9, {"a100": 3}, 11.01),  # k01 takes 1 s on an A10G: only A100s meet 0.9 s
        (0.7, 0.6, {"a10g": 2, "a100": 3}, 13.03),  # k01 alone-ish on A100s, k00/k10 apart
    ],
)
def test_the_plan_is_the_cheapest_of_every_assignment(
    ceiling: float, k01_sla: float, fleet: dict[str, int], cost: float
) -> None:
    cat = Catalogue.load(CATALOGUE)
    flows = _flows(cat, k01_sla)
    result = plan(flows, cat, ceiling)
    best = brute_force(flows, cat, ceiling)
    assert result.cost_per_hour == pytest.approx(best.cost_per_hour, rel=1e-9)
    assert {j: n for j, n in result.workers.items() if n} == fleet
    assert result.cost_per_hour == pytest.approx(cost)
    assert not result.late(flows)


def test_at_full_load_the_plan_is_the_capacity_optimum() -> None:
    """With every GPU allowed to fill up (ceiling 1), the plan is what packing the published
    throughputs into whole GPUs gives (each kind on one GPU type, the cheapest of all)."""
    best = math.inf
    for where in itertools.product(PRICE, repeat=4):
        load = {j: 0.0 for j in PRICE}
        for kind, j in zip(RATES, where, strict=True):
            load[j] += RATES[kind] / THROUGHPUT[j][kind]
        best = min(best, sum(math.ceil(load[j] - 1e-9) * PRICE[j] for j in PRICE))
    cat = Catalogue.load(CATALOGUE)
    assert plan(_flows(cat), cat, 1.0).cost_per_hour == pytest.approx(best) == 5.05


def test_the_simulator_serves_each_kind_at_its_own_speed() -> None:
    """The plan at a 0.6 s SLA for k01, simulated: each kind's median is its own service
    time (plus a little queueing), and the p95 is as predicted -- within 10 % on the A10Gs
    (k00 and k10, 0.2 s and 0.1 s), but up to about 35 % low for the A100s, which mix k01's
    0.5 s with k11's 0.05 s (docs/planning.md: a class whose steps' times are 10x apart)."""
    cat = Catalogue.load(CATALOGUE)
    flows = _flows(cat, 0.6)
    result = plan(flows, cat)
    sim = simulate(flows, cat, result.workers, result.placement, duration_s=2000, seed=2)
    for f in flows:
        (where,) = result.placement[f.name].values()
        alone = 1 / THROUGHPUT[where][f.name]
        assert alone * 0.999 <= sim.latency[f.name]["p50_s"] <= alone * 1.6, (f.name, where)
        predicted, seen = result.predicted[f.name]["p95_s"], sim.latency[f.name]["p95_s"]
        if where == "a10g":
            assert seen == pytest.approx(predicted, rel=0.1), f.name
        else:
            assert predicted < seen < predicted * 1.4, f.name


def test_a_kind_the_catalogue_does_not_time_is_refused(tmp_path: Path) -> None:
    (tmp_path / "load.yaml").write_text(
        WORKLOAD.read_text()
        .replace("kind: k11", "kind: k12")
        .replace("serve.yaml", str(PLANS / "serve.yaml"))
    )
    res = CliRunner().invoke(
        cli, ["plan", str(tmp_path / "load.yaml"), "--catalogue", str(CATALOGUE)]
    )
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert (
        "workflow 'k11': kind 'k12' has no figures in the catalogue (its kinds: k00, k01, k10, k11)"
        in out
    )


def test_the_worked_example_runs_from_the_command_line() -> None:
    res = CliRunner().invoke(cli, ["plan", str(WORKLOAD), "--catalogue", str(CATALOGUE), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["workers"] == {"a10g": 6} and doc["cost_per_hour"] == pytest.approx(6.06)
    assert set(doc["predicted"]) == set(RATES)


def test_the_catalogue_and_kinds_docs_planning_md_shows_plan(tmp_path: Path) -> None:
    doc = (PLANS.parents[2] / "docs" / "planning.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "pricing" not in b]
    devices = next(b for b in blocks if "[devices.a10g]" in b)
    kinds = next(b for b in blocks if "kinds = {" in b)
    small = Catalogue.loads(devices)  # the minimal catalogue alone
    assert small.devices["a10g"].price_per_hour == pytest.approx(1.01)
    assert small.latency("a100", "llm.chat") is not None
    cat = Catalogue.loads(devices + kinds)
    (tmp_path / "serve.yaml").write_text((PLANS / "serve.yaml").read_text())
    workload = re.findall(r"```yaml\n(workflows:\n  - \{file: serve.yaml.*?)```", doc, re.S)
    (tmp_path / "load.yaml").write_text(workload[0])
    flows = load_workload(tmp_path / "load.yaml", cat.splits)
    assert [(f.name, f.kind) for f in flows] == [("short", "short"), ("long", "long")]
    result = plan(flows, cat)
    assert result.placement["long"]["generate"] == "a100"  # 1 s on an A10G: over 0.9 s
    assert not result.late(flows)


def test_a_kind_no_device_has_figures_for_is_named() -> None:
    """k11 is a kind of the catalogue (another op times it), but no rule of llm.generate
    has figures for it: the error names the step and the kind."""
    text = CATALOGUE.read_text().replace("k11 = { fixed_s = 0.2 }", "k12 = { fixed_s = 0.2 }")
    text = text.replace("k11 = { fixed_s = 0.05 }", "k12 = { fixed_s = 0.05 }")
    text += '[ops."text.other".a10g]\nsource = "assumed: test"\nkinds = { k11 = { fixed_s = 1 } }\n'
    cat = Catalogue.loads(text)
    with pytest.raises(ConfigError, match=r"step 'generate' .*for requests of kind 'k11'"):
        plan(_flows(cat), cat)
