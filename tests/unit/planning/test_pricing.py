"""Both cost models: devices owned by the hour and capacity priced per unit (per call, per
token, per GB leaving a device), alone and mixed in one plan, solved exactly."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.export import plan_toml
from fleet.planning.planner import plan
from fleet.planning.predict import Plan, predict
from fleet.planning.sizing import sized
from fleet.planning.workload import StepLoad, WorkflowLoad, load_workload

PLANS = Path(__file__).resolve().parents[3] / "fleet" / "examples" / "plans"
CATALOGUE = PLANS / "per-unit.toml"
WORKLOAD = PLANS / "per-unit.yaml"


def example(sla: float, rate: float = 1.0, cat: Catalogue | None = None) -> list[WorkflowLoad]:
    flows = load_workload(WORKLOAD, (cat or Catalogue.load(CATALOGUE)).splits)
    return [replace(f, sla_s=sla, rate=rate) for f in flows]


def every_placement(flows: list[WorkflowLoad], cat: Catalogue) -> list[Plan]:
    """The four placements of prefill and decode on hp and co, each predicted: the exhaustive
    search the planner's answer is checked against."""
    (flow,) = flows
    paths = [s.path for s in flow.steps()]
    found = []
    for where in itertools.product(cat.devices, repeat=len(paths)):
        found.append(predict(flows, cat, {}, {flow.name: dict(zip(paths, where, strict=True))}))
    return found


@pytest.mark.parametrize(
    ("sla", "prefill", "decode", "per_request", "p95"),
    [
        (0.110, "hp", "hp", 0.120, 0.110),
        (0.120, "hp", "co", 0.095, 0.120),
        (0.200, "co", "co", 0.080, 0.200),
    ],
)
def test_the_per_unit_example_is_solved_exactly(
    sla: float, prefill: str, decode: str, per_request: float, p95: float
) -> None:
    cat = Catalogue.load(CATALOGUE)
    flows = example(sla, cat=cat)
    result = plan(flows, cat)
    assert result.placement["answer"] == {"generate:prefill": prefill, "generate:decode": decode}
    assert result.cost_per_request == pytest.approx(per_request, rel=1e-9)
    assert result.predicted["answer"]["p95_s"] == pytest.approx(p95, rel=1e-9)
    assert result.workers == {}  # nothing is bought: every class is paid per unit
    meets = [p for p in every_placement(flows, cat) if not p.late(flows)]
    assert result.cost_per_request == pytest.approx(min(p.cost_per_request for p in meets))


def test_the_split_pays_for_the_data_it_moves() -> None:
    cat = Catalogue.load(CATALOGUE)
    result = plan(example(0.120, rate=2.0, cat=cat), cat)
    # 2 requests/s x 1 GB x $0.01/GB, per hour; the tokens: 2/s x ($0.025 + $0.06)
    assert result.costs["egress"] == pytest.approx(2 * 0.01 * 3600)
    assert result.costs["per_unit"] == pytest.approx(2 * 0.085 * 3600)
    assert result.costs["owned"] == 0
    assert result.cost_per_hour == pytest.approx(2 * 0.095 * 3600)


def test_a_dearer_egress_keeps_prefill_and_decode_together() -> None:
    text = CATALOGUE.read_text().replace("egress_per_gb = 0.01", "egress_per_gb = 0.05")
    cat = Catalogue.loads(text)
    result = plan(example(0.120, cat=cat), cat)
    # the split now costs $0.025 + $0.06 + $0.05 = $0.135 > $0.12 on hp alone
    assert set(result.placement["answer"].values()) == {"hp"}
    assert result.cost_per_request == pytest.approx(0.120)


def test_owned_and_per_unit_devices_mix_in_one_plan() -> None:
    """co bought by the hour beside hp rented per token: the plan's cost is the cheapest of
    every placement sized by the same queueing estimates, and at a low rate the idle hours
    of an owned co cost more than hp's tokens."""
    text = CATALOGUE.read_text()
    owned = re.sub(
        r'\[devices\.co\]\npricing = "unit"\n(.*?)price_per_unit = [^\n]*\n',
        "[devices.co]\n\\1capex = 20000\npower_w = 300\nslots = 4\n",
        text,
        flags=re.S,
    )
    cat = Catalogue.loads(owned)
    assert cat.devices["co"].per_unit is False and cat.devices["hp"].per_unit
    for rate, sla in ((0.001, 0.2), (40.0, 0.2), (40.0, 0.13)):
        flows = example(sla, rate=rate, cat=cat)
        result = plan(flows, cat)
        options = []
        for prefill, decode in itertools.product(("hp", "co"), repeat=2):

            def choose(f: WorkflowLoad, s: StepLoad, p: str = prefill, d: str = decode) -> str:
                return p if s.path.endswith(":prefill") else d

            try:
                options.append(sized(flows, cat, choose))
            except ConfigError:
                continue
        best = min(options, key=lambda p: p.cost_per_hour)
        assert result.cost_per_hour == pytest.approx(best.cost_per_hour, rel=1e-6), (rate, sla)
        assert not result.late(flows)
        if rate < 1:  # an owned device's idle hours: hp's tokens are cheaper
            assert set(result.placement["answer"].values()) == {"hp"}
        else:  # busy: the bought co is cheaper per request than hp's tokens
            assert "co" in result.placement["answer"].values()
            assert result.workers["co"] >= 1 and result.costs["owned"] > 0


def test_a_per_unit_class_with_a_capacity_is_held_to_it() -> None:
    text = CATALOGUE.read_text().replace(
        '[devices.hp]\npricing = "unit"', '[devices.hp]\npricing = "unit"\ncapacity = 1'
    )
    cat = Catalogue.loads(text)
    # 20 requests/s of 20 ms prefill is 0.4 of one slot; with decode too (90 ms) hp is full
    result = plan(example(0.200, rate=20.0, cat=cat), cat)
    assert result.placement["answer"]["generate:decode"] == "co"
    assert result.utilisation["hp"] <= 0.7 + 1e-9


def test_the_plan_file_runs_a_per_unit_class_as_one_worker() -> None:
    cat = Catalogue.load(CATALOGUE)
    text = plan_toml(plan(example(0.120, cat=cat), cat), cat)
    assert '[classes."hp"]' in text and '[classes."co"]' in text
    assert "priced per unit" in text
    assert '"answer:generate" = { prefill = "hp", decode = "co" }' in text


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[devices.hp]\n", "[devices.hp]\ncapex = 5000\n", "pricing = 'unit' is paid per use"),
        ('pricing = "unit"', 'pricing = "rent"', "pricing = 'rent': expected 'hour' or 'unit'"),
        ('"llm.prefill" = 0.000025', '"llm.prefill" = "x"', "price_per_unit.llm.prefill = 'x'"),
        ("egress_per_gb = 0.01", "egress_per_gb = -1", "egress_per_gb = -1"),
        ('pricing = "unit"', 'pricing = "unit"\ncapacity = 0', "capacity = 0"),
    ],
)
def test_bad_prices_are_refused_naming_the_device(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Catalogue.loads(CATALOGUE.read_text().replace(old, new, 1))
    assert "device 'hp'" in str(err.value) and message in str(err.value)


def test_per_unit_prices_on_an_owned_device_are_refused() -> None:
    text = (PLANS.parent.parent / "data" / "catalogue.toml").read_text()
    bad = text.replace("[devices.cpu-2]\n", "[devices.cpu-2]\nprice_per_call = 0.01\n", 1)
    with pytest.raises(ConfigError, match=r"device 'cpu-2'.*need pricing = 'unit'"):
        Catalogue.loads(bad)


def test_the_per_unit_device_docs_planning_md_shows_loads() -> None:
    doc = (PLANS.parents[2] / "docs" / "planning.md").read_text()
    snippets = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "pricing" in b]
    api_block, hosted_block = snippets
    api = Catalogue.loads(api_block).devices["api"]
    assert api.per_unit and api.capacity == 64
    assert api.step_price("llm.decode", 100) == pytest.approx(0.0001 + 100 * 1e-6)
    assert api.step_price("http.request", 1) == pytest.approx(0.0001)
    hosted = Catalogue.loads(hosted_block).devices["hosted"]  # an endpoint as a device
    assert hosted.endpoint is not None and hosted.endpoint["api_key"] == "hosted"
    assert hosted.step_price("llm.generate", 1_000_000) == pytest.approx(2.0)


ENDPOINT_CATALOGUE = """
[network]
hop_s = 0.0

[devices.hosted]
pricing = "unit"
network_gbs = 1
price_per_unit = { "llm.generate" = 0.000002 }

[devices.hosted.endpoint]
base_url = "https://llm.example/v1"
model = "gemma"
api_key = "hosted"
price_in = 0.5

[ops."llm.generate"]
hosted = { fixed_s = 0.3, per_unit_s = 0.01, source = "assumed: the endpoint's own speed" }
"""


def test_a_plan_that_rents_an_endpoint_runs_its_llm_steps_there(tmp_path: Path) -> None:
    """A per-unit device that names an endpoint becomes, in the plan's fleet configuration,
    an endpoint class with its [endpoints] entry (completion tokens at the device's price
    per unit), and the plan's route sends the LLM node to it: its workers call the endpoint."""
    from fleet.config import load_config
    from fleet.sdk.registry import registry

    cat = Catalogue.loads(ENDPOINT_CATALOGUE)
    flows = [replace(f, sla_s=5.0) for f in load_workload(PLANS / "per-unit.yaml", cat.splits)]
    text = plan_toml(plan(flows, cat), cat)
    config = tmp_path / "plan.toml"
    config.write_text(text)
    cfg = load_config(config, env={})
    assert cfg.classes["hosted"].endpoint == "hosted"
    endpoint = cfg.endpoints["hosted"]
    assert endpoint.base_url == "https://llm.example/v1" and endpoint.api_key == "hosted"
    assert endpoint.dollars(0, 1_000_000) == pytest.approx(2.0)  # $2 per M completion tokens
    assert endpoint.price_in == 0.5 and endpoint.model == "gemma"
    assert cfg.routes["answer:generate"] == "hosted"
    registry.load(cfg.op_modules, cfg.op_plugins)
    assert "hosted" in registry.get("llm.generate").eligible(cfg.classes)


def test_an_endpoint_device_is_paid_per_unit_and_has_a_base_url() -> None:
    hourly = ENDPOINT_CATALOGUE.replace('pricing = "unit"', 'pricing = "hour"').replace(
        'price_per_unit = { "llm.generate" = 0.000002 }\n', ""
    )
    with pytest.raises(ConfigError, match="endpoint needs pricing = 'unit'"):
        Catalogue.loads(hourly)
    with pytest.raises(ConfigError, match="endpoint: expected a table with base_url"):
        Catalogue.loads(ENDPOINT_CATALOGUE.replace('base_url = "https', 'url = "https'))
