"""Benchmark figures, files and plots from the runs each deployment completed.

Per deployment (all rounds pooled): throughput, latency percentiles, SLA attainment,
per-class utilisation, cost per 1,000 workflows and routing overhead. Cost is given two ways:
*busy* (each class's price x the time its slots spent running steps: pay per use) and
*provisioned* (every slot of the deployment priced for the whole run: a fleet kept up).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from fleet.loadtest.result import Result

COLUMNS = [
    "deployment",
    "workflows",
    "failed",
    "throughput_per_s",
    "p50_s",
    "p95_s",
    "p99_s",
    "sla_attainment",
    "cost_busy_per_1000",
    "cost_provisioned_per_1000",
    "routing_us_median",
    "utilisation",
]


def summarize(name: str, results: list[Result]) -> dict[str, Any]:
    runs = [r for res in results for r in res.runs]
    ok = [r for r in runs if r["status"] == "succeeded" and r["latency_s"] is not None]
    lat = np.array([r["latency_s"] for r in ok]) if ok else np.array([np.nan])
    span = sum(res.ended - res.started for res in results)
    busy: dict[str, float] = {}
    for r in runs:
        for cls, secs in r["busy_s"].items():
            busy[cls] = busy.get(cls, 0.0) + secs
    prices, slots = results[0].prices, results[0].slots
    cost_busy = sum(busy.get(c, 0.0) * prices.get(c, 0.0) / 3600 for c in busy)
    cost_prov = sum(slots[c] * prices[c] / 3600 * span for c in slots)
    decide = [d for r in runs for d in r["decide_us"]]
    n = max(len(ok), 1)
    return {
        "deployment": name,
        "workflows": len(runs),
        "failed": len(runs) - len(ok),
        "throughput_per_s": round(len(ok) / span, 4) if span else 0.0,
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p95_s": round(float(np.percentile(lat, 95)), 3),
        "p99_s": round(float(np.percentile(lat, 99)), 3),
        "sla_attainment": round(
            sum(r["latency_s"] <= r["sla_s"] for r in ok) / max(len(runs), 1), 4
        ),
        "cost_busy_per_1000": round(cost_busy / n * 1000, 5),
        "cost_provisioned_per_1000": round(cost_prov / n * 1000, 5),
        "routing_us_median": round(float(np.median(decide)), 1) if decide else None,
        "utilisation": {c: round(busy.get(c, 0.0) / (slots[c] * span), 4) for c in slots}
        if span
        else {},
        "latencies": sorted(float(x) for x in lat if np.isfinite(x)),
    }


def ratios(rows: list[dict[str, Any]], best: str) -> dict[str, dict[str, float | None]]:
    """Throughput, p95 and busy cost of ``best`` against every other deployment."""
    by = {r["deployment"]: r for r in rows}
    b = by[best]
    out = {}
    for name, r in by.items():
        if name == best:
            continue
        out[name] = {
            "throughput": round(b["throughput_per_s"] / r["throughput_per_s"], 3)
            if r["throughput_per_s"]
            else None,
            "p95": round(b["p95_s"] / r["p95_s"], 3) if r["p95_s"] else None,
            "cost_busy": round(b["cost_busy_per_1000"] / r["cost_busy_per_1000"], 3)
            if r["cost_busy_per_1000"]
            else None,
            "cost_provisioned": round(
                b["cost_provisioned_per_1000"] / r["cost_provisioned_per_1000"], 3
            )
            if r["cost_provisioned_per_1000"]
            else None,
        }
    return out


def write(
    out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], results: list[Result]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "summary": rows,
        "runs": [
            {"deployment": res.deployment, "round": res.round, "runs": res.runs} for res in results
        ],
    }
    paths = [
        out / "bench.json",
        out / "bench.csv",
        out / "latency_cdf.png",
        out / "cost_vs_p95.png",
    ]
    paths[0].write_text(json.dumps(doc, indent=1, default=str))
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(r[k]) if isinstance(r[k], dict) else r[k]) for k in COLUMNS})
    _plots(rows, paths[2], paths[3])
    return paths


def replot(bench_json: Path, out: Path) -> None:
    """Draw the plots again from a saved bench.json."""
    rows = json.loads(bench_json.read_text())["summary"]
    _plots(rows, out / "latency_cdf.png", out / "cost_vs_p95.png")


def _plots(rows: list[dict[str, Any]], cdf_path: Path, cost_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        lat = r["latencies"]
        if lat:
            ax.step(
                lat,
                np.arange(1, len(lat) + 1) / len(lat),
                where="post",
                label=r["deployment"],
                color=f"C{i}",
            )
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("fraction of workflows")
    ax.set_title("Latency CDF per deployment")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(cdf_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["p95_s"], r["cost_busy_per_1000"], s=60, label=f"{r['deployment']} (busy)")
        ax.scatter(
            r["p95_s"],
            r["cost_provisioned_per_1000"],
            s=60,
            marker="x",
            label=f"{r['deployment']} (provisioned)",
        )
    ax.set_xlabel("p95 latency (s)")
    ax.set_ylabel("cost per 1,000 workflows ($)")
    ax.set_title("Cost against p95 latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(cost_path, dpi=110)
    plt.close(fig)
