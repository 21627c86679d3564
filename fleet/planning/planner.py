"""`fleet plan`: how many workers of each device class, and which class runs each step of each
workflow, at the lowest cost per hour that meets every workflow's p95 SLA.

The program (:mod:`fleet.planning.program`) places steps and sizes the owned classes for the
service times; its solution is then checked with M/G/c queueing estimates
(:mod:`fleet.planning.predict`). Where a workflow's predicted p95 misses its SLA, capacity is
added to the classes on its paths until the prediction meets it (a candidate,
:func:`fleet.planning.sizing.grow`), and the program is solved again with a tighter service
budget (another candidate, possibly cheaper); the cheapest candidate wins. When nothing can
meet an SLA, the error names the workflow and the best p95 it can get.
"""

from __future__ import annotations

import math

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.predict import Plan, predict
from fleet.planning.program import solve
from fleet.planning.sizing import grow, improve
from fleet.planning.workload import WorkflowLoad

MAX_ROUNDS = 8
PROBE_PRICE = 1e4  # $/h per second: only to find how far an impossible SLA is out of reach


def plan(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    ceiling: float = 0.7,
    violation_price: float | None = None,
) -> Plan:
    """The cheapest fleet and placement whose predicted p95 meets every SLA.

    The SLA is hard. With ``violation_price`` ($/h for each second a workflow's p95 is over
    its SLA) a cheaper fleet that misses an SLA wins when its price plus that penalty is
    lower; its notes say by how much each workflow is over."""
    if not 0 < ceiling <= 1:
        raise ConfigError(f"ceiling = {ceiling!r}: a utilisation above 0 and at most 1")
    check_kinds(flows, cat)
    ceilings = {j: d.ceiling or ceiling for j, d in cat.devices.items()}
    try:
        hard: Plan | None = improve(flows, cat, _hard(flows, cat, ceilings), ceiling)
    except ConfigError:
        if violation_price is None:
            raise
        hard = None
    if violation_price is None:
        assert hard is not None
        return hard
    candidates = [hard] if hard is not None else []
    scale = {f.name: 1.0 for f in flows}
    solved = solve(flows, cat, ceilings, scale, violation_price)
    if solved is not None:
        candidates.append(predict(flows, cat, solved.workers, solved.placement))

    def overage(p: Plan) -> float:
        return sum(max(0.0, p.predicted[f.name]["p95_s"] - f.sla_s) for f in flows)

    best = min(candidates, key=lambda p: p.cost_per_hour + violation_price * overage(p))
    if best is not hard:
        best.notes = list(hard.notes) if hard else []
        for f in flows:
            over = best.predicted[f.name]["p95_s"] - f.sla_s
            if over > 1e-9:
                best.notes.append(
                    f"{f.name}: p95 {best.predicted[f.name]['p95_s']:.3f} s, {over:.3f} s over "
                    f"its SLA, paid at {violation_price:g} $/h per second"
                )
        if hard is not None:
            best.notes.append(f"meeting every SLA would cost {hard.cost_per_hour:.3f} $/h")
    return best


def check_kinds(flows: list[WorkflowLoad], cat: Catalogue) -> None:
    """A workflow's request kind must be one the catalogue has figures for: a misspelt kind
    would be timed by the rules' general figures, silently."""
    known = cat.kinds()
    for f in flows:
        if f.kind is not None and f.kind not in known:
            have = ", ".join(sorted(known)) or "none: no rule has kinds"
            raise ConfigError(
                f"workflow '{f.name}': kind '{f.kind}' has no figures in the catalogue "
                f"(its kinds: {have})"
            )


def _hard(flows: list[WorkflowLoad], cat: Catalogue, ceilings: dict[str, float]) -> Plan:
    """The cheapest plan meeting every SLA (service time in the program, queueing checked)."""
    scale = {f.name: 1.0 for f in flows}
    notes: list[str] = []
    candidates: list[Plan] = []
    seen: list[tuple[dict[str, int], dict[str, dict[str, str]]]] = []
    for _ in range(MAX_ROUNDS):
        solved = solve(flows, cat, ceilings, scale)
        if solved is None:
            break  # a tighter budget is out of reach: keep what was found
        workers, placement = solved.workers, solved.placement
        if (workers, placement) in seen:
            scale = {name: s * 0.8 for name, s in scale.items()}
            continue  # the same fleet again: tighten further without checking it twice
        seen.append((workers, placement))
        result = predict(flows, cat, workers, placement)
        late = result.late(flows)
        if not late:
            candidates.append(result)
            break
        notes.append(
            "queueing check: "
            + ", ".join(f"{f.name} p95 {result.predicted[f.name]['p95_s']:.3f} s" for f in late)
            + " over the SLA; more workers, and a tighter service budget, tried"
        )
        grown = grow(flows, cat, workers, placement, {f.name: f.sla_s for f in flows})
        if grown is not None:
            candidates.append(grown)
        for f in late:  # leave more of the SLA to queueing: a tighter service budget
            scale[f.name] *= 0.8
        for j, u in result.utilisation.items():
            ceilings[j] = min(ceilings[j], max(0.3, u * 0.85)) if u > 0.5 else ceilings[j]
    if not candidates:
        raise ConfigError(_out_of_reach(flows, cat, ceilings))
    best = min(candidates, key=lambda p: p.cost_per_hour)
    if len(candidates) > 1:
        notes.append(f"{len(candidates)} fleets met the queueing check; the cheapest is kept")
    best.notes = notes
    return best


def _out_of_reach(flows: list[WorkflowLoad], cat: Catalogue, ceilings: dict[str, float]) -> str:
    """Why no plan meets the SLAs: per workflow, the best p95 the catalogue allows."""
    scale = {f.name: 1.0 for f in flows}
    probe = solve(flows, cat, ceilings, scale, PROBE_PRICE)
    if probe is None:
        return "the SLAs cannot be met, and the planning program has no solution"
    workers, placement, slack = probe.workers, probe.placement, probe.slack
    over = {f: s for f, s in slack.items() if s > 1e-6}
    if over:
        text = "; ".join(
            f"'{f.name}': its fastest placement takes {f.sla_s + over[f.name]:.3f} s of "
            f"service time alone (SLA {f.sla_s:g} s)"
            for f in flows
            if f.name in over
        )
        return f"the SLA cannot be met on any class of the catalogue: {text}"
    grown = grow(flows, cat, workers, placement, {f.name: math.inf for f in flows})
    shown = grown or predict(flows, cat, workers, placement)
    text = "; ".join(
        f"'{f.name}': best predicted p95 {shown.predicted[f.name]['p95_s']:.3f} s "
        f"(SLA {f.sla_s:g} s)"
        for f in flows
    )
    return f"no fleet met every SLA once queueing is counted: {text}"
