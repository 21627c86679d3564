"""The scale study of docs/planning.md: the example agent mix on fleets of about 100, 1,000
and 10,000 workers, three ways, and the planner's answer as the SLA moves.

python bench/scale_study.py [--out docs/planning] [--quick]

Fleets, each sized for the load by the same queueing estimates:
- plan: `fleet plan`'s heterogeneous fleet and placement;
- all-H100: every step an H100 can run on H100s, the rest (retrieval, text-to-speech) on
  their host's CPUs (cpu-16) -- the top-end homogeneous fleet;
- static: hand-written per-op routes over a mixed fleet, as Celery task_routes would be:
  speech, embeddings and LLM calls on A100s, retrieval and text on cpu-16, tools on io-32.

For each: cost per hour, the throughput at which it still meets every SLA (the largest
multiple of the design load whose M/M/c p95 fits; checked by simulation), cost per 1,000
workflows at that throughput, and the simulated p95 and utilisation at the design load
under the plan's placement and the live cost-sla policy (the better one is reported).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import plan
from fleet.planning.predict import Plan, predict
from fleet.planning.simulate import simulate
from fleet.planning.sizing import sized
from fleet.planning.workload import StepLoad, WorkflowLoad, load_workload

EXAMPLE = Path(__file__).resolve().parents[1] / "fleet" / "examples" / "plans" / "voice-20.yaml"
STATIC = {"speech.stt": "a100", "embed": "a100", "llm": "a100", "http": "io-32", "db": "io-32"}


def scaled(flows: list[WorkflowLoad], k: float) -> list[WorkflowLoad]:
    return [replace(f, rate=f.rate * k) for f in flows]


def static_route(flow: WorkflowLoad, step: StepLoad) -> str:
    return STATIC.get(step.op) or STATIC.get(step.op.split(".")[0], "cpu-16")


def all_h100(cat: Catalogue) -> Callable[[WorkflowLoad, StepLoad], str]:
    """The top-end homogeneous fleet: every step H100s can run on them, the rest on their
    host's CPUs (cpu-16)."""
    return lambda flow, step: "h100" if cat.latency("h100", step.op) else "cpu-16"


def fleets(flows: list[WorkflowLoad], cat: Catalogue) -> dict[str, Plan | None]:
    """The three fleets; None where one cannot meet the SLAs at any size."""
    out: dict[str, Plan | None] = {}
    makers: dict[str, Callable[[], Plan]] = {
        "plan": lambda: plan(flows, cat),
        "all-H100": lambda: sized(flows, cat, all_h100(cat)),
        "static": lambda: sized(flows, cat, static_route),
    }
    for name, make in makers.items():
        try:
            out[name] = make()
        except ConfigError:
            out[name] = None
    return out


def capacity(flows: list[WorkflowLoad], cat: Catalogue, fleet: Plan) -> float:
    """The largest multiple of the load this fleet serves within every SLA (M/M/c)."""
    lo, hi = 0.0, 4.0
    for _ in range(20):
        mid = (lo + hi) / 2
        p = predict(scaled(flows, mid), cat, fleet.workers, fleet.placement)
        ok = all(p.predicted[f.name]["p95_s"] <= f.sla_s for f in flows)
        ok = ok and all(u < 1.0 for u in p.utilisation.values())
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def study_point(flows: list[WorkflowLoad], cat: Catalogue, steps: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duration = max(5.0, steps / sum(f.steps_per_s() for f in flows))
    for name, fleet in fleets(flows, cat).items():
        assert fleet is not None, f"{name}: no fleet meets the SLAs"
        k = capacity(flows, cat, fleet)
        sims = [
            simulate(flows, cat, fleet.workers, fleet.placement, pol, duration, seed=1)
            for pol in ("plan", "cost-sla")
        ]
        best = min(sims, key=lambda r: max(r.latency[f.name]["p95_s"] / f.sla_s for f in flows))
        at_cap = simulate(
            scaled(flows, k * 0.98), cat, fleet.workers, fleet.placement, "plan", duration, 2
        )
        rate = sum(f.rate for f in flows)
        out[name] = {
            "workers": {j: n for j, n in fleet.workers.items() if n},
            "total_workers": sum(fleet.workers.values()),
            "cost_per_hour": fleet.cost_per_hour,
            "capacity_x": k,
            "throughput_at_sla": rate * k,
            "cost_per_1000": fleet.cost_per_hour / (rate * k * 3.6) if k else None,
            "cost_per_1000_design": fleet.cost_per_hour / (rate * 3.6),
            "sim_policy": best.policy,
            "sim_p95": {f: v["p95_s"] for f, v in best.latency.items()},
            "sim_sla_met": best.sla_met,
            "sim_sla_met_at_capacity": at_cap.sla_met,
            "utilisation": {j: round(u, 3) for j, u in best.utilisation.items()},
            "steps_simulated": best.steps,
        }
    return out


def sla_sweep(flows: list[WorkflowLoad], cat: Catalogue, slas: list[float]) -> list[dict[str, Any]]:
    """The planner's answer as the voice agent's SLA moves (RAG's keeps its ratio)."""
    base = flows[0].sla_s
    rows = []
    for sla in slas:
        fl = [replace(f, sla_s=f.sla_s * sla / base) for f in flows]
        row: dict[str, Any] = {"voice_sla_s": sla}
        for name, fleet in fleets(fl, cat).items():
            row[name] = fleet.cost_per_hour if fleet else None
            if name == "plan" and fleet:
                row["plan_workers"] = {j: n for j, n in fleet.workers.items() if n}
                row["plan_notes"] = fleet.notes
        rows.append(row)
    return rows


def _lines(
    ax: Any, series: dict[str, list[tuple[float, float]]], x: str, y: str, title: str
) -> None:
    for name, pts in series.items():
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend()


def plots(doc: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("plan", "static", "all-H100")
    paths = [out / "scale_cost.png", out / "sla_sweep.png", out / "scale_utilisation.png"]
    axes = [plt.subplots(figsize=(6.4, 4.2)) for _ in paths]
    scale = {
        n: [(p[n]["total_workers"], p[n]["cost_per_1000"]) for p in doc["scales"].values()]
        for n in names
    }
    _lines(
        axes[0][1],
        scale,
        "workers in the fleet",
        "$ per 1,000 workflows at the SLA's throughput",
        "Cost per workflow against fleet size",
    )
    axes[0][1].set_xscale("log")
    sweep = {n: [(r["voice_sla_s"], r[n]) for r in doc["sweep"] if r[n] is not None] for n in names}
    _lines(
        axes[1][1],
        sweep,
        "voice agent p95 SLA (s); RAG's scales with it",
        "fleet cost, $/h (the ~1,000-worker load)",
        "What the SLA costs",
    )
    axes[1][1].set_yscale("log")
    ax = axes[2][1]
    biggest = list(doc["scales"].values())[-1]
    bars = [(f"{n}\n{j}", u) for n in names for j, u in biggest[n]["utilisation"].items()]
    ax.bar(range(len(bars)), [u for _, u in bars])
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7)
    ax.set_ylabel("simulated utilisation")
    ax.set_title("Utilisation per class, largest fleet, design load")
    for (fig, _), path in zip(axes, paths, strict=True):
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close("all")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/planning", type=Path)
    ap.add_argument("--quick", action="store_true", help="Smaller simulations.")
    args = ap.parse_args()
    cat = Catalogue.load()
    flows = load_workload(EXAMPLE, cat.splits)
    base = plan(flows, cat)
    per_worker = sum(base.workers.values())
    steps = 2e5 if args.quick else 1e6
    doc: dict[str, Any] = {"scales": {}, "catalogue": "fleet/data/catalogue.toml"}
    began = time.time()
    for target in (100, 1000, 10_000):
        k = target / per_worker
        flows_k = scaled(flows, k)
        print(f"~{target} workers: load x{k:.1f} ...", flush=True)
        doc["scales"][str(target)] = study_point(flows_k, cat, steps)
        doc["scales"][str(target)]["load_x"] = k
    print("SLA sweep ...", flush=True)
    flows_1k = scaled(flows, 1000 / per_worker)
    slas = [0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.8, 1.0, 2.0, 3.0]
    doc["sweep"] = sla_sweep(flows_1k, cat, slas)
    doc["seconds"] = round(time.time() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(doc, indent=1))
    for p in plots(doc, args.out):
        print("wrote", p)
    for target, point in doc["scales"].items():
        for n in ("plan", "static", "all-H100"):
            r = point[n]
            print(
                f"{target:>6} {n:9} workers {r['total_workers']:6d}  ${r['cost_per_hour']:9.2f}/h"
                f"  capacity x{r['capacity_x']:.2f}  $/1k {r['cost_per_1000']:.4f}"
                f"  sim p95 {r['sim_p95']}  ({r['sim_policy']})"
            )
    for r in doc["sweep"]:
        print(
            f"SLA {r['voice_sla_s']:>5}: "
            + "  ".join(
                f"{n} " + (f"${r[n]:.2f}/h" if r[n] is not None else "infeasible")
                for n in ("plan", "static", "all-H100")
            )
        )


if __name__ == "__main__":
    main()
