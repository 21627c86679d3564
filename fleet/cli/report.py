"""Human-readable tables: a run's trace, the fleet's status, the op registry."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleet.config import FleetConfig
from fleet.registry import Registry
from fleet.routing.profiles import ProfileStore
from fleet.routing.state import FleetState
from fleet.runtime.doctor import DoctorReport
from fleet.runtime.runs import TraceEntry


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
    table.add_column("op", no_wrap=True, min_width=max(2, *(len(e.op or "") for e in trace)))
    table.add_column("class", no_wrap=True, min_width=max(5, *(len(e.cls or "") for e in trace)))
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
            e.cls or "-",
            escape((e.worker or "-").rpartition("@")[2]),
            e.status + mark,
            _ms(e.wait_s),
            _ms(e.run_s) if e.status != "skipped" else "-",
            _ms(e.started_at - base) if e.status != "skipped" else "-",
            *((_estimate(e),) if why else ()),
        )
        if why and e.route.get("reason"):
            reasons.append(f"why {e.node} -> {e.cls or '-'}: {e.route['reason']}")
    if errors or reasons:
        table.caption = Text("\n".join(errors + reasons))
        table.caption_justify = "left"
    return table


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


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def profiles_table(store: ProfileStore, pairs: list[tuple[str, str]] | None = None) -> Table:
    table = Table(title="profiles", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("op", "class", "fixed ms", "per unit ms", "peak MB", "steps/s", "samples"):
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
        gpu = "GPU build" if rt.gpu else "CPU build" if rt.gpu is False else "?"
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
