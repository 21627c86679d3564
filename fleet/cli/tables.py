"""Every table the CLI draws, in one place: a run's trace, the fleet's status, the ops, the
doctor's report, profiles, plans, simulations, calibration, the benchmark and the eval.

Only rich is imported at module level (the types come in for the type checker only), so a
command that draws one table does not load what the others describe.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleet.calibration import P50_BOUND, P95_BOUND

if TYPE_CHECKING:
    from fleet.calibration.calibrate import Row
    from fleet.config import FleetConfig
    from fleet.diagnostics.doctor import DoctorReport, RuntimeReport
    from fleet.evaluation.scoring import Verdict
    from fleet.planning.catalogue import Catalogue
    from fleet.planning.check import Finding
    from fleet.planning.predict import Plan
    from fleet.planning.simulate import SimResult
    from fleet.routing.profiles import ProfileStore
    from fleet.routing.state import FleetState
    from fleet.sdk.registry import Registry
    from fleet.store.records import TraceEntry


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def trace_table(trace: list[TraceEntry], t0: float | None = None, why: bool = False) -> Table:
    """One row per step. Node names and statuses are never cut; errors and (with ``why``) the
    routing reasons go under the table, so that the rows fit a 100-column terminal."""
    table = Table(
        title="trace (ms)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    nodes = max((len(e.node) for e in trace), default=4)
    table.add_column("node", no_wrap=True, min_width=nodes)
    table.add_column("op", no_wrap=True, min_width=max([2, *(len(e.op or "") for e in trace)]))
    table.add_column("class", no_wrap=True, min_width=max([5, *(len(e.cls or "") for e in trace)]))
    table.add_column("host", overflow="ellipsis", max_width=16)  # the one that gives way
    table.add_column("status", no_wrap=True, min_width=10)
    for col in ("wait", "run", "start") + (("est",) if why else ()):
        table.add_column(col, justify="right", no_wrap=True, min_width=6)
    base = t0 if t0 is not None else min((e.started_at for e in trace), default=0.0)
    errors: list[str] = []
    reasons: list[str] = []
    for e in trace:
        mark = ""
        if e.error:
            errors.append(f"[{len(errors) + 1}] {e.node}: {e.error}")
            mark = f" [{len(errors)}]"
        table.add_row(
            escape(e.node),
            e.op or "-",
            (e.cls or "-") + ("*" if e.device else ""),
            escape((e.worker or "-").rpartition("@")[2]),
            e.status + mark,
            _ms(e.wait_s),
            _ms(e.run_s) if e.status != "skipped" else "-",
            _ms(e.started_at - base) if e.status != "skipped" else "-",
            *((_estimate(e),) if why else ()),
        )
        if e.status == "waiting":
            errors.append(_waiting(e))
        if why and e.route.get("reason"):
            reasons.append(f"why {e.node} -> {e.cls or '-'}: {e.route['reason']}")
    fallbacks = sorted({f"class {e.cls} ran on {e.device}" for e in trace if e.device})
    errors += [f"* {f}" for f in fallbacks]  # a GPU class on a worker with none
    if errors or reasons:
        table.caption = Text("\n".join(errors + reasons))
        table.caption_justify = "left"
    return table


def _waiting(e: TraceEntry) -> str:
    """What a parked node waits for, since when and until when (UTC)."""
    what = f"signal '{e.signal}'" if e.signal else "its time"
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    since = time.strftime(stamp, time.gmtime(e.started_at))
    until = time.strftime(stamp, time.gmtime(e.until)) if e.until else "no end"
    return f"{e.node} waits for {what} since {since}, until {until}"


def _estimate(e: TraceEntry) -> str:
    """The expected completion the policy computed for the class it chose, if it did."""
    est = (e.route.get("estimates") or {}).get(e.cls or "")
    total = est.get("total_s") if isinstance(est, dict) else None
    return "-" if total is None else _ms(float(total))


def trace_json(trace: list[TraceEntry]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in trace]


def status_table(cfg: FleetConfig, state: FleetState) -> Table:
    table = Table(title="fleet", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("class", "queue", "depth", "busy", "workers", "slots", "pool", "hosts"):
        numeric = col in ("depth", "busy", "workers", "slots")
        table.add_column(col, justify="right" if numeric else "left")
    for name, spec in cfg.classes.items():
        workers = state.workers.get(name, [])
        table.add_row(
            name,
            spec.queue_name,
            str(state.depth.get(name, "?")),
            str(state.busy(name)),
            str(len(workers)),
            str(state.slots(name)),
            ",".join(sorted({w.pool for w in workers})) or spec.pool,
            ", ".join(w.hostname for w in workers) or "-",
        )
    return table


def ops_table(registry: Registry) -> Table:
    table = Table(title="ops", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("op", "kind", "prefers", "runs on", "outputs", "description"):
        table.add_column(col)
    for name in registry.names():
        spec = registry.get(name)
        table.add_row(
            name,
            spec.kind,
            spec.prefers,
            "any" if spec.classes == ("*",) else ",".join(spec.classes),
            ",".join(spec.outputs),
            spec.description,
        )
    return table


def profiles_table(store: ProfileStore, pairs: list[tuple[str, str]] | None = None) -> Table:
    table = Table(title="profiles", title_justify="left", box=box.SIMPLE_HEAD)
    cols = ("op", "class", "fixed ms", "per unit ms", "peak MB", "steps/s", "batch", "samples")
    for col in cols:
        table.add_column(col, justify="left" if col in ("op", "class") else "right")
    keys = pairs if pairs is not None else sorted(store.profiles)
    for op, cls in keys:
        p = store.get(op, cls)
        if p is None:
            continue
        table.add_row(
            op,
            cls,
            f"{p.fixed_s * 1000:.2f}",
            f"{p.per_unit_s * 1000:.3f}",
            "-" if p.peak_mem_mb is None else f"{p.peak_mem_mb:.0f}",
            "-" if p.throughput is None else f"{p.throughput:.1f}",
            # throughput at k at once over one at a time, on a batching class
            " ".join(f"{k}:{v:.2f}x" for k, v in (p.batch or {}).items()) or "-",
            str(p.samples),
        )
    return table


def doctor_table(report: DoctorReport) -> Table:
    """``fleet doctor``: one row per class, then what is wrong (with fixes) and notes."""
    table = Table(title=f"fleet doctor: {report.host}", title_justify="left")
    for col in ("class", "pool x slots", "device", "binds to", "runtimes", "preload"):
        table.add_column(col)
    for c in report.classes:
        table.add_row(
            c.name,
            f"{c.pool} x {c.concurrency}",
            c.device,
            c.binds_to,
            ", ".join(c.runtimes) or "-",
            ", ".join(c.preload) or "-",
        )
    for rt in report.runtimes.values():
        gpu = _gpu_word(rt)
        table.add_section()
        table.add_row(f"runtime {rt.name}", rt.version or "-", gpu, "", rt.error or "", "")
    lines = [f"[red]problem[/] {p}" for p in report.problems]
    for c in report.classes:
        lines += [f"[red]problem[/] {c.name}: {p}" for p in c.problems]
        lines += [f"note {c.name}: {n}" for n in c.notes]
    lines += [f"note {n}" for n in report.notes]
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table


def plan_tables(plan: Plan, cat: Catalogue, baselines: dict[str, Plan]) -> list[Table]:
    """``fleet plan``: the fleet to buy, each workflow's predicted latency, the baselines."""
    fleet = Table(title="fleet", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("class", "workers", "slots", "$/h each", "$/h", "utilisation"):
        fleet.add_column(col, justify="left" if col == "class" else "right")
    for j in plan.used():
        d = cat.devices[j]
        if d.per_unit:
            cap = str(d.capacity) if d.capacity else "any"
            fleet.add_row(
                j, "per unit", cap, "-", f"{plan.unit_costs[j]:.3f}", f"{plan.utilisation[j]:.2f}"
            )
            continue
        n = plan.workers[j]
        fleet.add_row(
            j,
            str(n),
            str(d.slots),
            f"{d.price_per_hour:.3f}",
            f"{n * d.price_per_hour:.3f}",
            f"{plan.utilisation[j]:.2f}",
        )
    fleet.caption = f"total {plan.cost_per_hour:.3f} $/h, {plan.cost_per_request:.6f} $ per run"
    if plan.costs.get("egress"):
        fleet.caption += f" (data movement {plan.costs['egress']:.3f} $/h)"
    flows = Table(title="workflows (M/G/c estimates)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("workflow", "p50 s", "p95 s", "SLA s", "placement"):
        flows.add_column(col, overflow="fold")
    for name, p in plan.predicted.items():
        placed: dict[str, list[str]] = {}
        for step, j in plan.placement[name].items():
            placed.setdefault(j, []).append(step)
        where = "; ".join(f"{j}: {', '.join(s)}" for j, s in placed.items())
        flows.add_row(name, f"{p['p50_s']:.2f}", f"{p['p95_s']:.2f}", f"{p['sla_s']:g}", where)
    base = Table(title="against homogeneous fleets", title_justify="left", box=box.SIMPLE_HEAD)
    base.caption = "each: every step it can run on one device, the rest on the cheapest"
    for col in ("fleet", "$/h", "plan saves"):
        base.add_column(col, justify="left" if col == "fleet" else "right")
    for name, b in baselines.items():
        saves = b.cost_per_hour / plan.cost_per_hour if plan.cost_per_hour else math.inf
        base.add_row(name, f"{b.cost_per_hour:.3f}", f"x{saves:.2f}")
    return [fleet, flows, base]


def calibration_table(rows: list[Row]) -> Table:
    """``fleet calibrate``: p50 and p95 live against simulated, errors past the bounds red."""
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


def bench_table(rows: list[dict[str, Any]]) -> Table:
    """``fleet bench``: the summary per deployment (every figure but the lists)."""
    table = Table(title="benchmark", title_justify="left", box=box.SIMPLE_HEAD)
    cols = [c for c in rows[0] if not isinstance(rows[0][c], dict | list)] if rows else []
    for c in cols:
        table.add_column(c.replace("_per_1000", " /1k").replace("_", " "))
    for r in rows:
        table.add_row(*[str(r[c]) for c in cols])
    return table


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "[red]x[/]")


def eval_tables(verdicts: list[Verdict], result: dict[str, Any]) -> list[Table]:
    """``fleet eval``: one row per question, then the per-stage summary."""
    rows = Table(title="questions", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("id", "voice", "heard", "wer", "tool", "order", "hit", "answer", "ok", "s"):
        rows.add_column(col, overflow="fold", justify="right" if col in ("wer", "s") else "left")
    for v in verdicts:
        rows.add_row(
            v.id,
            v.voice,
            escape(v.heard),
            f"{v.wer:.2f}",
            _mark(v.tool_ok) + (f" {v.tool_rounds}x" if v.tool_rounds else ""),
            _mark(v.order_ok),
            _mark(v.retrieval_hit),
            escape(v.error or v.answer),
            _outcome(v),
            f"{v.seconds:.1f}",
        )
    stages = Table(title="per stage", title_justify="left", box=box.SIMPLE_HEAD)
    stages.add_column("measure")
    stages.add_column("value", justify="right")
    for key, value in result.items():
        if not isinstance(value, dict):
            stages.add_row(key, str(value))
            continue
        for sub, item in value.items():  # one row each: per kind, per voice, per check...
            stages.add_row(f"{key} {sub}", _flat(item))
    return [rows, stages]


def _outcome(v: Verdict) -> str:
    """ok (right); asked (asked back: how); x and the failed checks (wrong)."""
    if v.answer_ok:
        return "ok"
    if v.outcome == "asked_back":
        return f"[yellow]asked[/] {v.asked}"
    return "[red]x[/] " + ", ".join(v.failed)


def _flat(value: Any) -> str:
    if isinstance(value, dict):  # a dict within: "outcomes (right 0.9, ...)"
        return ", ".join(
            f"{k} ({_flat(v)})" if isinstance(v, dict) else f"{k} {v}" for k, v in value.items()
        )
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def simulate_table(runs: list[SimResult]) -> Table:
    """``fleet simulate``: latency per policy and workflow, SLA met, simulated steps/s."""
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
    return table


def check_table(found: list[Finding], seconds: float) -> Table:
    """`fleet plan --check`: each figure the plan predicted against what the fleet did."""
    table = Table(title=f"the fleet against its plan ({seconds:.0f} s watched)", box=box.SIMPLE)
    for name in ("", "figure", "planned", "observed", ""):
        table.add_column(name)
    for f in found:
        fmt = "{:.2f}".format
        planned = "-" if f.planned is None else fmt(f.planned)
        observed = "-" if f.observed is None else fmt(f.observed)
        verdict = f"[red]{f.why}[/]" if f.drifted else f.why
        table.add_row(f.subject, f.what, planned, observed, verdict)
    return table


def _gpu_word(rt: RuntimeReport) -> str:
    """What a runtime can do with the GPU, as the doctor found it."""
    if rt.gpu:
        return f"GPU ({rt.devices} seen)" if rt.devices else "GPU build"
    if rt.gpu is None:
        return "?"
    if rt.needs:
        return f"no GPU: {rt.needs}"
    return "sees no GPU" if rt.devices == 0 else "CPU build"  # devices: a runtime that counts
