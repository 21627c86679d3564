"""`fleet plan` and `fleet simulate`: the slow path's commands (see fleet/planning/)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from fleet.cli.common import console, fail, split
from fleet.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plans" / "voice-20.yaml"


def _load(workload: str | None, catalogue: str | None) -> tuple[Any, Any]:
    from fleet.planning.catalogue import CATALOGUE, Catalogue
    from fleet.planning.workload import load_workload

    try:
        cat = Catalogue.load(Path(catalogue) if catalogue else CATALOGUE)
        flows = load_workload(Path(workload) if workload else EXAMPLE, cat.splits)
    except ConfigError as exc:
        fail(str(exc), 2)
    return cat, flows


def plan_toml(plan: Any, cat: Any) -> str:
    """A fleet configuration `fleet up` / `fleet worker` accept: one class per device the plan
    uses, and the plan's placement as the static policy's routing table."""
    lines = [
        "# Written by `fleet plan`: one class per device class the plan uses; start",
        "# `workers` of each (`fleet worker CLASS` per worker). The [routes] table is the",
        "# placement: workflow:node -> class, which the static policy follows.",
        'policy = "static"',
        f"control_class = {json.dumps(next(j for j, n in plan.workers.items() if n))}",
        "",
    ]
    for j, n in plan.workers.items():
        if not n:
            continue
        d = cat.devices[j]
        lines += [
            f"[classes.{json.dumps(j)}]",
            f"concurrency = {d.slots}",
            f"price_per_hour = {d.price_per_hour:.4f}",
            f"network_mb_s = {d.network_gbs * 1000:.0f}",
            f"serves = {json.dumps(d.serves)}",
            f'description = "planned: {n} worker(s), utilisation {plan.utilisation[j]:.2f}"',
            "",
        ]
    budgets: dict[str, float] = {}
    for flow, steps in plan.budgets.items():
        for path, seconds in steps.items():  # an LLM call's two halves: one node's budget
            key = f"{flow}:{path.split(':')[0]}"
            budgets[key] = budgets.get(key, 0.0) + seconds
    lines.append("[budgets]")
    lines += [f"{json.dumps(k)} = {v:.4f}" for k, v in budgets.items()]
    lines += ["", "[routes]"]
    routes: dict[str, str] = {}
    for flow, steps in plan.placement.items():
        for path, j in steps.items():  # in graph order: a split step's first part names it
            routes.setdefault(f"{flow}:{path.split(':')[0]}", j)
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in routes.items()]
    return "\n".join(lines) + "\n"


def _plan_tables(plan: Any, cat: Any, baselines: dict[str, Any]) -> list[Table]:
    fleet = Table(title="fleet", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("class", "workers", "slots", "$/h each", "$/h", "utilisation"):
        fleet.add_column(col, justify="left" if col == "class" else "right")
    for j, n in plan.workers.items():
        if n:
            d = cat.devices[j]
            fleet.add_row(
                j,
                str(n),
                str(d.slots),
                f"{d.price_per_hour:.3f}",
                f"{n * d.price_per_hour:.3f}",
                f"{plan.utilisation[j]:.2f}",
            )
    fleet.caption = f"total {plan.cost_per_hour:.3f} $/h"
    flows = Table(title="workflows (M/M/c estimates)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("workflow", "p50 s", "p95 s", "SLA s", "placement"):
        flows.add_column(col, overflow="fold")
    for name, p in plan.predicted.items():
        placed: dict[str, list[str]] = {}
        for step, j in plan.placement[name].items():
            placed.setdefault(j, []).append(step)
        where = "; ".join(f"{j}: {', '.join(s)}" for j, s in placed.items())
        flows.add_row(name, f"{p['p50_s']:.2f}", f"{p['p95_s']:.2f}", f"{p['sla_s']:g}", where)
    base = Table(title="against homogeneous fleets", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("fleet", "$/h", "plan saves"):
        base.add_column(col, justify="left" if col == "fleet" else "right")
    for name, b in baselines.items():
        saves = b.cost_per_hour / plan.cost_per_hour if plan.cost_per_hour else math.inf
        base.add_row(name, f"{b.cost_per_hour:.3f}", f"x{saves:.2f}")
    return [fleet, flows, base]


@click.command("plan")
@click.argument("workload", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--catalogue", type=click.Path(dir_okay=False, exists=True), help="Device classes.")
@click.option("--ceiling", default=0.7, show_default=True, help="Utilisation ceiling per class.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the fleet config (TOML).")
@click.option("--json", "as_json", is_flag=True)
def plan_command(
    workload: str | None, catalogue: str | None, ceiling: float, out: str | None, as_json: bool
) -> None:
    """Size and place a heterogeneous fleet: the fewest dollars per hour that meet every
    workflow's p95 SLA (a mixed-integer program, HiGHS), checked with queueing estimates.

    WORKLOAD lists workflows with their arrival rate and SLA (default: the packaged
    fleet/examples/plans/voice-20.yaml); the device classes come from the catalogue
    (default: fleet/data/catalogue.toml).
    """
    from fleet.planning.planner import homogeneous, plan

    cat, flows = _load(workload, catalogue)
    try:
        result = plan(flows, cat, ceiling)
        baselines = {f"{d} + cpu-16": homogeneous(flows, cat, d) for d in ("h100", "a100")}
    except ConfigError as exc:
        fail(str(exc), 2)
    if out:
        Path(out).write_text(plan_toml(result, cat))
    if as_json:
        doc = {
            "workers": {j: n for j, n in result.workers.items() if n},
            "cost_per_hour": result.cost_per_hour,
            "utilisation": {j: u for j, u in result.utilisation.items() if u},
            "predicted": result.predicted,
            "placement": result.placement,
            "budgets": result.budgets,
            "baselines": {k: b.cost_per_hour for k, b in baselines.items()},
            "notes": result.notes,
        }
        console.print_json(json.dumps(doc))
        return
    for table in _plan_tables(result, cat, baselines):
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    if out:
        console.print(f"wrote {out}")


@click.command("simulate")
@click.argument("workload", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--catalogue", type=click.Path(dir_okay=False, exists=True), help="Device classes.")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="plan, static, preferred, least-latency or cost-sla (default: plan and the last two).",
)
@click.option("--duration", default=120.0, show_default=True, help="Simulated seconds.")
@click.option(
    "--steps", type=int, help="Simulate about this many steps per policy (instead of --duration)."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--cv", default=0.2, show_default=True, help="Service-time variation.")
@click.option("--json", "as_json", is_flag=True)
def simulate_command(
    workload: str | None,
    catalogue: str | None,
    policies: tuple[str, ...],
    duration: float,
    steps: int | None,
    seed: int,
    cv: float,
    as_json: bool,
) -> None:
    """Simulate the planned fleet serving the workload, routed by the live fleet's own
    policy objects; report p50/p95 per workflow and simulated steps per wall-clock second.

    Conditions, loops and maps follow each workflow's `shape:` in the workload file (chance
    of a node, mean iterations, map items), drawn per run.
    """
    from fleet.planning.planner import plan
    from fleet.planning.simulate import simulate

    cat, flows = _load(workload, catalogue)
    if steps:  # the expected steps per simulated second, arrivals times steps per run
        duration = steps / sum(f.steps_per_s() for f in flows)
    try:
        fleet = plan(flows, cat)
        runs = [
            simulate(flows, cat, fleet.workers, fleet.placement, p, duration, seed, cv)
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
    table = Table(title="simulated", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("policy", "workflow", "runs", "p50 s", "p95 s", "SLA met", "steps/s"):
        table.add_column(col, justify="left" if col in ("policy", "workflow") else "right")
    for r in runs:
        for name, lat in r.latency.items():
            table.add_row(
                r.policy,
                name,
                str(lat["runs"]),
                f"{lat['p50_s']:.3f}",
                f"{lat['p95_s']:.3f}",
                "yes" if r.sla_met[name] else "[red]no[/]",
                f"{r.steps_per_s:,.0f}",
            )
    console.print(table)
    console.print(f"{steps:,} steps simulated at {steps / wall:,.0f} steps/s wall-clock")


P50_BOUND, P95_BOUND = 0.15, 0.25  # the simulator's agreement with the live fleet


@click.command("calibrate")
@click.option("--quick", is_flag=True, help="Triage and RAG only, 30 s: a few minutes.")
@click.option("--rate", default=1.0, show_default=True, help="Arrivals per second.")
@click.option("--duration", type=float, help="Seconds of arrivals [60; quick: 30].")
@click.option("--profile-runs", type=int, help="Isolated runs per profiled deployment [24].")
@click.option("--deployments", help="Comma-separated (default: all four).")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--out",
    default="bench/results/calibration",
    show_default=True,
    type=click.Path(file_okay=False),
)
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, exists=True),
    help="Compare again from a saved calibration.json (no live runs).",
)
@click.option("--json", "as_json", is_flag=True)
def calibrate_command(
    quick: bool,
    rate: float,
    duration: float | None,
    profile_runs: int | None,
    deployments: str | None,
    seed: int,
    out: str,
    source: str | None,
    as_json: bool,
) -> None:
    """The simulator against the live fleet on this machine: profile each workflow alone,
    run `fleet bench`'s workload on each deployment, then simulate the same arrivals on a
    model of each deployment (this machine's cores shared by every class) and compare p50
    and p95. Writes calibration.json to --out; exits 1 where p50 is off by more than 15 %
    or p95 by more than 25 %.
    """
    from rich.progress import Progress

    from fleet.tooling.bench import Workload
    from fleet.tooling.bench import deployments as all_deployments
    from fleet.tooling.calibration import compare, measure

    if source:
        doc = json.loads(Path(source).read_text())
    else:
        names = split(deployments) or [d.name for d in all_deployments()]
        workload = Workload(rate=rate, duration_s=duration or (30.0 if quick else 60.0), seed=seed)
        with Progress(console=console) as bar:
            task = bar.add_task("workflows", total=None)
            doc = measure(
                workload,
                quick,
                names,
                profile_runs or 24,
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
        console.print(_calibration_table(rows))
    raise SystemExit(0 if within else 1)


def _calibration_table(rows: list[Any]) -> Table:
    table = Table(title="simulated vs measured", title_justify="left", box=box.SIMPLE_HEAD)
    cols = ("deployment", "runs", "p50 live", "p50 sim", "err", "p95 live", "p95 sim", "err")
    for col in cols:
        table.add_column(col, justify="left" if col == "deployment" else "right")
    for r in rows:
        e50, e95 = r.error("p50_s"), r.error("p95_s")
        table.add_row(
            r.deployment,
            str(int(r.measured["runs"])),
            f"{r.measured['p50_s']:.3f}",
            f"{r.simulated['p50_s']:.3f}",
            ("" if abs(e50) <= P50_BOUND else "[red]") + f"{e50:+.0%}",
            f"{r.measured['p95_s']:.3f}",
            f"{r.simulated['p95_s']:.3f}",
            ("" if abs(e95) <= P95_BOUND else "[red]") + f"{e95:+.0%}",
        )
    return table
