"""M/M/c (Erlang C) estimates of the queue wait at a device class: the check the planner runs
on its own plans (service times are not exponential, so these are estimates, and the
simulator is the finer check)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Wait:
    utilisation: float  # 0..1 (>= 1: the queue grows without bound)
    p_wait: float  # probability that a step waits at all
    mean_s: float
    p95_s: float


def erlang_c(arrivals_per_s: float, mean_service_s: float, servers: int) -> Wait:
    """The wait of a step at ``servers`` slots fed Poisson ``arrivals_per_s``."""
    if arrivals_per_s <= 0 or mean_service_s <= 0:
        return Wait(0.0, 0.0, 0.0, 0.0)
    if servers <= 0:
        return Wait(math.inf, 1.0, math.inf, math.inf)
    load = arrivals_per_s * mean_service_s  # offered load in erlangs
    rho = load / servers
    if rho >= 1:
        return Wait(rho, 1.0, math.inf, math.inf)
    # Erlang C through the Erlang B recursion (stable for large server counts)
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    c = b / (1 - rho * (1 - b))
    drain = servers / mean_service_s - arrivals_per_s  # rate at which the queue empties
    mean = c / drain
    p95 = math.log(c / 0.05) / drain if c > 0.05 else 0.0
    return Wait(rho, c, mean, p95)
