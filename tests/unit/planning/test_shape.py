"""Conditions, loops and maps in the planning graph, drawn per run by the simulator; and
classes on one host sharing its cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import ClassSpec, FleetConfig
from fleet.errors import ConfigError
from fleet.planning.simmodel import SimClass, SimModel
from fleet.planning.simulate import simulate_model
from fleet.planning.workload import Shape, StepLoad, WorkflowLoad, flatten, load_workload
from fleet.routing.profiles import ProfileStore
from fleet.workflow.loader import load_workflow

AGENT = """name: agent
inputs: [q]
nodes:
  - {name: first, op: text.normalize, inputs: {text: inputs.q}}
  - name: rounds
    inputs: {q: first.text}
    loop: {max_iterations: 3, until: "done.found"}
    workflow:
      name: round
      inputs: [q]
      nodes:
        - {name: think, op: text.upper, inputs: {text: inputs.q}}
        - {name: done, op: text.contains, inputs: {text: think.text}, params: {words: [x]}}
        - {name: act, op: text.upper, when: done.found == false, inputs: {text: think.text}}
      outputs: {q: think.text}
  - {name: each, op: text.upper, map: text, inputs: {text: rounds.q}}
  - {name: last, op: text.normalize, inputs: {text: each.text}}
outputs: {a: last.text}
"""


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT)
    return path


def test_loops_unroll_to_their_mean_conditions_get_chances_and_maps_widen(
    tmp_path: Path,
) -> None:
    spec = load_workflow(_spec(tmp_path))
    shape = Shape(chance={"rounds/act": 0.25}, loops={"rounds": 1.5}, maps={"each": 3})
    g, chances = flatten(spec, {}, None, shape)
    assert {"rounds/think", "rounds#2/think", "each[0]", "each[2]"} <= set(g.nodes)
    assert not any("#3" in n for n in g.nodes)  # a mean of 1.5 never needs a third round
    assert chances == {
        "when:rounds/act": 0.25,
        "loop:rounds#2": 0.5,
        "when:rounds#2/act": 0.25,
    }
    step = g.nodes["rounds#2/act"]["step"]
    assert step.guards == ("loop:rounds#2", "when:rounds#2/act")
    assert step.chance == pytest.approx(0.125)
    # the second round follows the first; every map item follows the loop; `last` all items
    assert g.has_edge("rounds/done", "rounds#2/think") or g.has_edge("rounds/act", "rounds#2/think")
    assert all(g.has_edge(f"each[{i}]", "last") for i in range(3))


def test_a_node_that_never_runs_is_left_out_and_the_order_kept(tmp_path: Path) -> None:
    spec = load_workflow(_spec(tmp_path))
    g, chances = flatten(spec, {}, None, Shape(chance={"rounds/done": 0.0}))
    assert "rounds/done" not in g.nodes and "when:rounds/done" not in chances
    assert g.has_edge("rounds/think", "rounds/act")


def test_a_wait_node_is_left_out_of_the_plan() -> None:
    """A run parked on a wait holds no worker: wait nodes are not steps to place, and the
    steps after one follow what came before it."""
    from fleet.paths import EXAMPLES

    g, _ = flatten(load_workflow(EXAMPLES / "refund_approval.yaml"), {})
    assert "approval" not in g.nodes and "decision" in g.nodes
    assert not any(str(d["step"].op).startswith("wait.") for _, d in g.nodes(data=True))


def test_a_bad_shape_names_the_key(tmp_path: Path) -> None:
    _spec(tmp_path)
    (tmp_path / "w.yaml").write_text(
        "workflows:\n  - {file: agent.yaml, rate: 1, sla_p95_s: 2, "
        "shape: {chance: {rounds/act: 1.5}}}\n"
    )
    with pytest.raises(ConfigError, match=r"shape.chance\['rounds/act'\] = 1.5"):
        load_workload(tmp_path / "w.yaml")
    (tmp_path / "w.yaml").write_text(
        "workflows:\n  - {file: agent.yaml, rate: 1, sla_p95_s: 2, shape: {whens: {}}}\n"
    )
    with pytest.raises(ConfigError, match="unknown key"):
        load_workload(tmp_path / "w.yaml")


def _model(service: float, demand: float, servers: int = 2, cores: float | None = 2.0) -> SimModel:
    cfg = FleetConfig(classes={"c": ClassSpec(name="c", concurrency=servers)}, control_class="c")
    host = "h" if cores is not None else None
    return SimModel(
        {"c": SimClass("c", servers, 1.0, 1, 1e9, host)},
        lambda f, s, j: service,
        lambda f, s: ["c"],
        cfg,
        ProfileStore(),
        hosts={"h": cores} if cores is not None else {},
        demand=lambda f, s, j: demand,
        spread=lambda f, s, j: 0.0,
    )


def _one_step(chance: float = 1.0) -> WorkflowLoad:
    import networkx as nx

    g = nx.DiGraph()
    guards = ("when:s",) if chance < 1 else ()
    g.add_node("s", step=StepLoad("s", "text.upper", 1.0, guards, chance))
    g.add_node("t", step=StepLoad("t", "text.upper", 1.0))
    g.add_edge("s", "t", bytes=0)
    return WorkflowLoad("f", 1.0, 10.0, g, None, {"when:s": chance} if chance < 1 else {})


@pytest.mark.parametrize(("demand", "expected"), [(2.0, 4.0), (1.0, 2.0), (0.1, 2.0)])
def test_classes_on_one_host_share_its_cores(demand: float, expected: float) -> None:
    # two runs at once, each two 1 s steps, on 2 cores: with a demand of 2 cores a step they
    # take twice as long; with 1 core each they fit; a step that waits (0.1) is not slowed
    res = simulate_model(
        [_one_step()], _model(1.0, demand), arrivals=[(0.0, 0), (0.0, 0)], warmup_s=0.0
    )
    assert res.samples["f"] == pytest.approx([expected, expected])


def test_the_simulator_draws_conditions_per_run_and_is_deterministic() -> None:
    flows = [_one_step(chance=0.3)]
    model = _model(0.001, 0.0, servers=8, cores=None)
    arrivals = [(i * 0.01, 0) for i in range(4000)]
    a = simulate_model(flows, model, arrivals=arrivals, seed=5, warmup_s=0.0)
    b = simulate_model(flows, model, arrivals=arrivals, seed=5, warmup_s=0.0)
    assert a.steps == b.steps and a.samples == b.samples
    assert a.steps / 4000 == pytest.approx(1.3, abs=0.03)  # `t` always, `s` 30 % of runs
