"""Commands that plan a fleet: plan (size and place it), simulate (serve the workload on it,
routed by the live policies) and calibrate (the simulator against the live fleet).

What a command needs beyond click is imported inside it: `fleet --help` loads none of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleet.cli.common import console, fail, split
from fleet.deploy.signals import stops_on_signals
from fleet.errors import ConfigError
from fleet.loadtest import MIXES
from fleet.paths import example

if TYPE_CHECKING:
    from fleet.planning.catalogue import Catalogue
    from fleet.planning.workload import WorkflowLoad

EXAMPLE = example("plans", "voice-20.yaml")
WORKLOAD = click.argument("workload", required=False, type=click.Path(dir_okay=False, exists=True))
CATALOGUE = click.option(
    "--catalogue",
    type=click.Path(dir_okay=False, exists=True),
    show_default="fleet/data/catalogue.toml",
    help="The device classes: price, slots, speed per op.",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _seconds(value: float) -> float:
    """A window in seconds: above 0 and finite (``nan`` would watch for ever)."""
    if not 0 < value < math.inf:
        raise click.BadParameter(f"{value} is not a number of seconds above 0")
    return value


def _ceiling(value: float) -> float:
    """A utilisation ceiling: a share of a class's capacity, above 0 and at most 1."""
    if not 0 < value <= 1:
        raise click.BadParameter(f"{value:g} is not a utilisation above 0 and at most 1")
    return value


def _as_saved(toml_text: str, path: Path) -> str:
    """The plan as its file's suffix says: YAML for .yaml/.yml (the configuration is read by
    its suffix, so `fleet up --plan plan.yaml` reads it back), else TOML."""
    if path.suffix not in (".yaml", ".yml"):
        return toml_text
    import tomllib

    import yaml

    lines = toml_text.splitlines()
    head = lines[: next(i for i, line in enumerate(lines) if line[:1] != "#")]
    doc = yaml.safe_dump(tomllib.loads(toml_text), sort_keys=False, width=100)
    return "\n".join([*head, doc])


def _load(workload: str | None, catalogue: str | None) -> tuple[Catalogue, list[WorkflowLoad]]:
    from fleet.planning.catalogue import CATALOGUE, Catalogue
    from fleet.planning.workload import load_workload

    try:
        cat = Catalogue.load(Path(catalogue) if catalogue else CATALOGUE)
        workflows = load_workload(Path(workload) if workload else EXAMPLE, cat.splits)
    except ConfigError as exc:
        fail(str(exc), 2)
    return cat, workflows


@click.command()
@WORKLOAD
@CATALOGUE
@click.option(
    "--ceiling",
    default=0.7,
    callback=lambda ctx, param, value: _ceiling(value),
    help="Utilisation ceiling per class: above 0, at most 1.",
)
@click.option(
    "--violation-price",
    type=click.FloatRange(min=0),
    show_default="none: every SLA is hard",
    help="Trade latency for cost: $/h for each second a workflow's p95 is over its SLA.",
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    help="Write the plan as a fleet config (TOML) that `fleet up` and `fleet worker` run.",
)
@click.option(
    "--check",
    "check_file",
    type=click.Path(dir_okay=False),
    help="Instead: hold the running fleet to this saved plan and say what drifted (exit 1).",
)
@click.option(
    "--window",
    default=30.0,
    callback=lambda ctx, param, value: _seconds(value),
    help="With --check: seconds to watch the fleet.",
)
@AS_JSON
def plan(
    workload: str | None,
    catalogue: str | None,
    ceiling: float,
    violation_price: float | None,
    save: str | None,
    check_file: str | None,
    window: float,
    as_json: bool,
) -> None:
    """Size and place a heterogeneous fleet: the fewest dollars per hour that meet every
    workflow's p95 SLA (a mixed-integer program, HiGHS), checked with queueing estimates.

    WORKLOAD lists workflows with their arrival rate and SLA (default: the packaged
    fleet/examples/plans/voice-20.yaml); the device classes come from the catalogue. Exits 2
    naming the workflow and its best reachable p95 when an SLA cannot be met. The plan is
    compared with the homogeneous fleet of each catalogue device that meets the SLAs.

    With --check PLAN: watch the running fleet for --window seconds and compare each
    workflow's rate and p95 and each class's utilisation with what the saved plan predicted;
    exit 1 when something drifted.
    """
    if check_file is not None:
        _check(check_file, window, as_json)
        return
    from fleet.cli.tables import plan_tables
    from fleet.planning import planner, sizing
    from fleet.planning.export import plan_toml

    cat, workflows = _load(workload, catalogue)
    try:
        result = planner.plan(workflows, cat, ceiling, violation_price)
    except ConfigError as exc:
        fail(str(exc), 2)
    baselines, skipped = sizing.baselines(workflows, cat, ceiling)
    result.notes += skipped
    if save:
        text = plan_toml(result, cat, {f.name: f.rate for f in workflows})
        Path(save).write_text(_as_saved(text, Path(save)))
    if as_json:
        doc = {
            "workers": {j: n for j, n in result.workers.items() if n},
            "cost_per_hour": result.cost_per_hour,
            "cost_per_request": result.cost_per_request,
            "costs": result.costs,
            "per_unit_classes": result.unit_costs,
            "utilisation": {j: u for j, u in result.utilisation.items() if u},
            "predicted": result.predicted,
            "placement": result.placement,
            "budgets": result.budgets,
            "baselines": {k: b.cost_per_hour for k, b in baselines.items()},
            "notes": result.notes,
        }
        console.print_json(json.dumps(doc))
        return
    for table in plan_tables(result, cat, baselines):
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    if save:
        console.print(f"wrote {save}")


@click.command()
@WORKLOAD
@CATALOGUE
@click.option(
    "--policy",
    "policies",
    multiple=True,
    show_default="plan, least-latency and cost-sla",
    help="plan, static, preferred, least-latency or cost-sla (repeat for several).",
)
@click.option("--duration", default=120.0, help="Seconds of arrivals, simulated, per policy.")
@click.option(
    "--steps", type=int, help="Simulate about this many steps per policy (instead of --duration)."
)
@click.option("--seed", default=0, help="Seed of the arrivals and service times.")
@click.option(
    "--cv",
    type=click.FloatRange(min=0),
    show_default="the catalogue's: each rule's or device's cv, else 0.2",
    help="Service-time coefficient of variation for every step.",
)
@AS_JSON
def simulate(
    workload: str | None,
    catalogue: str | None,
    policies: tuple[str, ...],
    duration: float,
    steps: int | None,
    seed: int,
    cv: float | None,
    as_json: bool,
) -> None:
    """Simulate the planned fleet serving the workload, routed by the live fleet's own
    policy objects; report p50/p95 per workflow and simulated steps per wall-clock second.

    Conditions, loops and maps follow each workflow's `shape:` in the workload file (chance
    of a node, mean iterations, map items), drawn per run.
    """
    from fleet.cli.tables import simulate_table
    from fleet.planning import planner
    from fleet.planning.simulate import simulate as run_simulation

    cat, workflows = _load(workload, catalogue)
    if steps:  # the expected steps per simulated second, arrivals times steps per run
        duration = steps / sum(w.steps_per_s() for w in workflows)
    try:
        fleet = planner.plan(workflows, cat)
        runs = [
            run_simulation(workflows, cat, fleet.workers, fleet.placement, p, duration, seed, cv)
            for p in (policies or ("plan", "least-latency", "cost-sla"))
        ]
    except (ConfigError, ValueError) as exc:
        fail(str(exc), 2)
    steps = sum(r.steps for r in runs)
    wall = sum(r.wall_s for r in runs)
    if as_json:
        doc = {
            "workers": {j: n for j, n in fleet.workers.items() if n},
            "steps": steps,
            "steps_per_s": steps / wall if wall else 0.0,
            "runs": [
                {
                    "policy": r.policy,
                    "workflows": r.runs,
                    "steps": r.steps,
                    "steps_per_s": r.steps_per_s,
                    "latency": r.latency,
                    "utilisation": r.utilisation,
                    "sla_met": r.sla_met,
                    "cost_per_hour": r.cost_per_hour,
                }
                for r in runs
            ],
        }
        console.print_json(json.dumps(doc))
        return
    console.print(simulate_table(runs))
    console.print(f"{steps:,} steps simulated at {steps / wall:,.0f} steps/s wall-clock")


@click.command()
@click.option("--quick", is_flag=True, help="The quick mix for 30 s: a few minutes.")
@click.option(
    "--mix",
    type=click.Choice(MIXES),
    show_default="full; quick with --quick",
    help="full: triage, RAG, voice agent; quick: triage, RAG; sleeps: steps that wait, not "
    "compute (a check of the mechanism that a busy machine cannot fail).",
)
@click.option("--rate", default=1.0, help="Arrivals per second.")
@click.option(
    "--duration",
    type=float,
    show_default="60; quick: 30",
    help="Seconds of arrivals per deployment.",
)
@click.option(
    "--profile-runs", default=24, help="Isolated runs per workflow on each profiled deployment."
)
@click.option(
    "--deployments",
    show_default="all four",
    help="Comma-separated: homogeneous, static, least-latency, cost-sla.",
)
@click.option("--seed", default=7, help="Seed of the arrivals.")
@click.option(
    "--out",
    default="bench/results/calibration",
    type=click.Path(file_okay=False),
    help="Folder for calibration.json and the fleets' logs.",
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, exists=True),
    help="Compare again from a saved calibration.json (no live runs).",
)
@AS_JSON
@stops_on_signals
def calibrate(
    quick: bool,
    mix: str | None,
    rate: float,
    duration: float | None,
    profile_runs: int,
    deployments: str | None,
    seed: int,
    out: str,
    source: str | None,
    as_json: bool,
) -> None:
    """The simulator against the live fleet on this machine: profile each workflow alone,
    run `fleet bench`'s arrivals on each deployment, then simulate the same arrivals on a
    model of each deployment (this machine's cores shared by every class) and compare p50
    and p95. Writes calibration.json to --out; exits 1 where p50 is off by more than 15 %
    or p95 by more than 25 %.
    """
    from rich.progress import Progress

    from fleet.calibration import P50_BOUND, P95_BOUND
    from fleet.calibration.calibrate import compare, measure
    from fleet.cli.tables import calibration_table
    from fleet.loadtest.arrivals import Arrivals
    from fleet.loadtest.deployments import deployments as all_deployments

    if source:
        try:
            doc = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            fail(f"{source}: cannot read a calibration (JSON): {exc}", 2)
    else:
        names = split(deployments) or [d.name for d in all_deployments()]
        arrivals = Arrivals(rate=rate, duration_s=duration or (30.0 if quick else 60.0), seed=seed)
        with Progress(console=console) as bar:
            task = bar.add_task("workflows", total=None)
            doc = measure(
                arrivals,
                mix or ("quick" if quick else "full"),
                names,
                profile_runs,
                Path(out),
                bar.console.print,
                lambda: bar.advance(task),
            )
    rows = compare(doc)
    within = all(
        abs(r.error("p50_s")) <= P50_BOUND and abs(r.error("p95_s")) <= P95_BOUND for r in rows
    )
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "within_bounds": within,
                    "rows": [
                        {
                            "deployment": r.deployment,
                            "measured": r.measured,
                            "simulated": r.simulated,
                            "p50_error": r.error("p50_s"),
                            "p95_error": r.error("p95_s"),
                            "per_workflow": r.per_job,
                        }
                        for r in rows
                    ],
                }
            )
        )
    else:
        console.print(calibration_table(rows))
    raise SystemExit(0 if within else 1)


def _check(plan_file: str, window: float, as_json: bool) -> None:
    import redis

    from fleet.cli.common import plan_config
    from fleet.cli.tables import check_table
    from fleet.planning.check import compare, observe

    cfg = plan_config(plan_file)
    if not cfg.predicted.workflows and not cfg.predicted.classes:
        fail(f"{plan_file} has no [predicted] figures: save it again with `fleet plan --save`", 2)
    try:
        with console.status(f"watching the fleet for {window:g} s..."):
            seen = observe(cfg, window)
    except redis.RedisError as exc:
        fail(f"cannot read the fleet state: {exc}")
    found = compare(cfg.predicted, seen)
    if as_json:
        console.print_json(json.dumps([f.__dict__ for f in found]))
    else:
        console.print(check_table(found, seen.seconds))
    drifted = [f for f in found if f.drifted]
    for f in drifted:
        console.print(f"drifted: {f.subject} {f.what}: {f.why}")
    if drifted:
        raise SystemExit(1)
