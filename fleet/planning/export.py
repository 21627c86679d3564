"""A plan as the fleet configuration that runs it: one class per device class the plan uses
(with the number of workers it sized), its latency budgets per node, its placement as routes
(every policy follows them while they hold) and the LLM calls it splits."""

from __future__ import annotations

import json

from fleet.config import default_classes
from fleet.planning.catalogue import Catalogue, Device
from fleet.planning.predict import Plan


def plan_toml(plan: Plan, cat: Catalogue, rates: dict[str, float] | None = None) -> str:
    """A fleet configuration `fleet up` / `fleet worker` accept: one class per device the plan
    uses, and the plan's placement as the static policy's routing table."""
    lines = [
        "# Written by `fleet plan`: one class per device class the plan uses, with the",
        "# workers it sized (`fleet up --plan FILE` starts them; or `fleet worker CLASS` per",
        "# worker). [routes] is the placement (workflow:node -> class) every policy follows",
        "# while it holds; [budgets] each node's share of its SLA; [splits] the LLM calls run",
        "# as prefill and decode on two classes.",
        'policy = "static"',
        f"control_class = {json.dumps(plan.used()[0])}",
        "",
    ]
    for j in plan.used():
        lines += _class(j, plan, cat)
    unused = [c for c in default_classes() if c not in plan.used()]
    if unused:  # only the plan's classes: a built-in class would have no worker
        lines.append("# The built-in classes the plan does not use: left out (their ops run")
        lines.append("# on the planned classes that serve them, or are refused at submit).")
    for c in unused:
        lines += [f"[classes.{json.dumps(c)}]", "enabled = false", ""]
    for j in plan.used():
        lines += _endpoint(j, cat)
    budgets: dict[str, float] = {}
    for flow, budget in plan.budgets.items():
        for path, seconds in budget.items():  # an LLM call's two halves: one node's budget
            key = f"{flow}:{path.split(':')[0]}"
            budgets[key] = budgets.get(key, 0.0) + seconds
    lines.append("[budgets]")
    lines += [f"{json.dumps(k)} = {v:.4f}" for k, v in budgets.items()]
    lines += ["", "[routes]"]
    routes: dict[str, str] = {}
    for flow, placed in plan.placement.items():
        for path, j in placed.items():  # in graph order: a split step's first part names it
            routes.setdefault(f"{flow}:{path.split(':')[0]}", j)
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in routes.items()]
    lines += ["", "[splits]"]
    for key, parts in splits(plan).items():
        lines.append(
            f"{json.dumps(key)} = {{ prefill = {json.dumps(parts['prefill'])}, "
            f"decode = {json.dumps(parts['decode'])} }}"
        )
    lines += _predicted(plan, rates or {})
    return "\n".join(lines) + "\n"


def _class(j: str, plan: Plan, cat: Catalogue) -> list[str]:
    d = cat.devices[j]
    if d.per_unit:  # one worker that calls out; its price is per step, not per hour
        n, slots = 1, d.capacity or d.slots
        why = f"planned: priced per unit ({plan.unit_costs.get(j, 0.0):.3f} $/h at the rates)"
    else:
        n, slots = plan.workers[j], d.slots
        why = f"planned: {n} worker(s), utilisation {plan.utilisation[j]:.2f}"
    return [
        f"[classes.{json.dumps(j)}]",
        f"pool = {json.dumps(pool(d))}",
        f"concurrency = {slots}",
        f"price_per_hour = {d.price_per_hour / slots:.6f}",  # a slot's (the device's / slots)
        f"network_mb_s = {d.network_gbs * 1000:.0f}",
        f"serves = {json.dumps(d.serves)}",
        f"device = {json.dumps(d.device)}",
        f"workers = {n}",
        f"max_workers = {n}",  # `fleet up --autoscale` may go down to one, back to n
        f"description = {json.dumps(why)}",
        *([f"endpoint = {json.dumps(j)}"] if d.endpoint else []),
        "",
    ]


def pool(d: Device) -> str:
    """The pool a planned class's workers need: the device's own, else threads where its
    slots are one process's batch or its steps wait on an endpoint, else the pool of the
    built-in classes it serves when they agree (an I/O pool's threads), else prefork."""
    if d.pool is not None:
        return d.pool
    if d.batches or d.endpoint:
        return "threads"
    presets = default_classes()
    served = {presets[c].pool for c in d.serves if c in presets}
    return served.pop() if len(served) == 1 else "prefork"


def _endpoint(j: str, cat: Catalogue) -> list[str]:
    """A device that is an LLM endpoint, as the fleet's ``[endpoints.J]``: its class's
    workers complete generations there, charged at the device's prices."""
    d = cat.devices[j]
    if not d.endpoint:
        return []
    given = d.endpoint
    # $ per completion token: the device's per-unit price (its generations' units are tokens)
    per_token = max(d.price_per_unit.values(), default=0.0)
    lines = [
        f"[endpoints.{json.dumps(j)}]",
        f"base_url = {json.dumps(given['base_url'])}",
        f"price_out = {per_token * 1e6:.6f}",
        f"price_in = {float(given.get('price_in', 0.0)):.6f}",
    ]
    lines += [f"{k} = {json.dumps(given[k])}" for k in ("model", "api_key") if k in given]
    return [*lines, ""]


def _predicted(plan: Plan, rates: dict[str, float]) -> list[str]:
    """What the plan predicts, for `fleet plan --check` to hold the running fleet to."""
    lines = []
    for flow, figures in plan.predicted.items():
        lines += ["", f"[predicted.workflows.{json.dumps(flow)}]"]
        if flow in rates:
            lines.append(f"rate = {rates[flow]:g}")
        lines += [f"{k} = {v:.4f}" for k, v in figures.items() if k in ("p50_s", "p95_s", "sla_s")]
    lines += ["", "[predicted.classes]"]
    lines += [f"{json.dumps(j)} = {plan.utilisation[j]:.3f}" for j in plan.used()]
    return lines


def splits(plan: Plan) -> dict[str, dict[str, str]]:
    """The LLM calls the plan puts on two classes: "workflow:node" -> {prefill, decode}."""
    found: dict[str, dict[str, str]] = {}
    for flow, placed in plan.placement.items():
        for path, j in placed.items():
            node, _, part = path.partition(":")
            if part in ("prefill", "decode"):
                found.setdefault(f"{flow}:{node}", {})[part] = j
    return {k: v for k, v in found.items() if len(v) == 2 and v["prefill"] != v["decode"]}
