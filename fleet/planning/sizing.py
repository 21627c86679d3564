"""Sizing a given placement: workers added where a workflow is late (the planner's queueing
fix), fixed placements sized by the same estimates, and the homogeneous baselines a plan is
compared with."""

from __future__ import annotations

import math
from collections.abc import Callable

from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.predict import Plan, predict
from fleet.planning.program import eligible
from fleet.planning.workload import StepLoad, WorkflowLoad

GROW_PATIENCE = 50  # rounds of adding workers without a better p95 before giving up


def grow(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    workers: dict[str, int],
    placement: dict[str, dict[str, str]],
    allowed: dict[str, float],
) -> Plan | None:
    """The placement with workers added, busiest owned class of a late workflow first, until
    every predicted p95 is within ``allowed``; None when more workers stop helping (or the
    late workflows run only on classes priced by the unit, which have no workers to add)."""
    workers = dict(workers)
    best, stuck = math.inf, 0
    while stuck < GROW_PATIENCE:
        result = predict(flows, cat, workers, placement)
        late = {f.name: result.predicted[f.name]["p95_s"] - allowed[f.name] for f in flows}
        worst_late = max(late.values())
        if worst_late <= 1e-9:
            return result
        best, stuck = (worst_late, 0) if worst_late < best - 1e-9 else (best, stuck + 1)
        used = {
            j
            for name, d in late.items()
            if d > 0
            for j in placement[name].values()
            if not cat.devices[j].per_unit
        }
        if not used:
            return None
        worst = max(used, key=lambda j: (result.utilisation[j], -cat.devices[j].price_per_hour))
        workers[worst] += max(1, workers[worst] // 50)
    return None


def cheapest(cat: Catalogue, flow: WorkflowLoad, step: StepLoad) -> str:
    """The device that runs ``step`` for the fewest dollars: an owned one's busy time at its
    price per slot-hour, a per-unit one's price per step."""
    options = eligible(cat, flow, step.op)
    if not options:
        raise ConfigError(f"no device can run {step.op} (workflow '{flow.name}')")

    def dollars(j: str) -> float:
        d = cat.devices[j]
        if d.per_unit:
            return d.step_price(step.op, step.units)
        t = cat.step_time(j, step.op, step.units, flow.kind)
        assert t is not None
        return d.price_per_hour / 3600 / d.slots * t

    return min(options, key=dollars)


def homogeneous(
    flows: list[WorkflowLoad], cat: Catalogue, device: str, ceiling: float = 0.7
) -> Plan:
    """A baseline: every step ``device`` can run goes to it, each other step to the cheapest
    device that can run it; as few of each as the load and the SLA allow."""

    def choose(flow: WorkflowLoad, step: StepLoad) -> str:
        if device in eligible(cat, flow, step.op):
            return device
        return cheapest(cat, flow, step)

    return sized(flows, cat, choose, ceiling)


def baselines(
    flows: list[WorkflowLoad], cat: Catalogue, ceiling: float = 0.7
) -> tuple[dict[str, Plan], list[str]]:
    """The homogeneous fleet of each catalogue device that can run some step, named by its
    devices ("h100 + cpu-16"); one that cannot meet the SLAs is skipped, with a note."""
    found: dict[str, Plan] = {}
    notes: list[str] = []
    for device in cat.devices:
        if not any(device in eligible(cat, f, s.op) for f in flows for s in f.steps()):
            continue
        try:
            base = homogeneous(flows, cat, device, ceiling)
        except ConfigError as exc:
            notes.append(f"baseline {device}: skipped ({exc})")
            continue
        used = base.used()
        name = " + ".join([device, *sorted(j for j in used if j != device)])
        if name not in found:
            found[name] = base
    return found, notes


def sized(
    flows: list[WorkflowLoad],
    cat: Catalogue,
    choose: Callable[[WorkflowLoad, StepLoad], str],
    ceiling: float = 0.7,
) -> Plan:
    """A fixed placement (``choose``: workflow, step -> device, e.g. hand-written routes)
    with as few workers of each owned device as the load and the SLAs allow, by the same
    queueing estimates."""
    placement: dict[str, dict[str, str]] = {}
    busy: dict[str, float] = {}
    for f in flows:
        placement[f.name] = {}
        for s in f.steps():
            j = choose(f, s)
            t = cat.step_time(j, s.op, s.units, f.kind) if j in cat.devices else None
            if t is None:
                raise ConfigError(f"{j} cannot run {s.op} ('{f.name}', step '{s.path}')")
            placement[f.name][s.path] = j
            busy[j] = busy.get(j, 0.0) + f.rate * s.chance * t
    workers = {
        j: max(
            1, math.ceil(b / ((cat.devices[j].ceiling or ceiling) * cat.devices[j].slots) - 1e-9)
        )
        for j, b in busy.items()
        if not cat.devices[j].per_unit
    }
    result = grow(flows, cat, workers, placement, {f.name: f.sla_s for f in flows})
    if result is not None:
        return result
    floor = predict(flows, cat, {j: 100 * n for j, n in workers.items()}, placement)
    over = {f.name: floor.predicted[f.name]["p95_s"] - f.sla_s for f in flows}
    name = max(over, key=lambda n: over[n])
    raise ConfigError(
        f"the placement ({', '.join(sorted(busy))}) cannot meet the SLA of '{name}': its p95 "
        f"stays {over[name]:.3f} s over with any number of workers"
    )


MOVES = 400  # placements a local search may size, at most (each a few milliseconds)


def _follow(
    placement: dict[str, dict[str, str]],
) -> Callable[[WorkflowLoad, StepLoad], str]:
    return lambda flow, step: placement[flow.name][step.path]


def improve(flows: list[WorkflowLoad], cat: Catalogue, start: Plan, ceiling: float) -> Plan:
    """The plan with single steps moved to another class while that makes it cheaper, each
    placement sized by the same queueing estimates (:func:`sized`). The program sizes for
    service times and the queueing check only adds workers, so a plan where two kinds of
    work queue behind each other on one class may be beaten by one that keeps them apart."""
    best, tries = start, 0
    better = True
    while better and tries < MOVES:
        better = False
        for f in flows:
            for s in f.steps():
                here = best.placement[f.name][s.path]
                for j in eligible(cat, f, s.op):
                    if j == here or tries >= MOVES:
                        continue
                    tries += 1
                    moved = {**best.placement, f.name: {**best.placement[f.name], s.path: j}}
                    try:
                        found = sized(flows, cat, _follow(moved), ceiling)
                    except ConfigError:
                        continue
                    if found.cost_per_hour < best.cost_per_hour - 1e-9:
                        found.workers = {k: found.workers.get(k, 0) for k in cat.owned()}
                        best, better = found, True
    if best is not start:
        best.notes = [*start.notes, "steps moved to other classes after the program: cheaper"]
    return best
