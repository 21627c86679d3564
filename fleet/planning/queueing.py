"""Queueing estimates of a device class's wait and a workflow's latency: the check the planner
runs on its own plans (the simulator is the finer check).

A class of ``c`` slots fed Poisson arrivals is an M/G/c queue. Its wait is estimated by the
Allen-Cunneen approximation: the M/M/c (Erlang C) probability of waiting, and a wait, when
there is one, exponential with the M/M/c mean scaled by ``(1 + cv^2) / 2`` -- cv the
coefficient of variation of the service time (1: exponential, M/M/c exactly; 0: fixed
times, M/D/c, half the wait). A path's latency is the sum of its steps' service times and
waits (independent), and its median and p95 are those of a gamma distribution with the
sum's mean and variance, above the path's fixed part (data movement, steps of fixed time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import gammaincinv  # type: ignore[import-untyped]

P95 = 0.95


@dataclass(frozen=True)
class Wait:
    utilisation: float  # 0..1 (>= 1: the queue grows without bound)
    p_wait: float  # probability that a step waits at all
    mean_s: float
    p95_s: float
    var_s: float = 0.0  # the wait's variance (s^2)


NO_WAIT = Wait(0.0, 0.0, 0.0, 0.0)


def erlang_c(arrivals_per_s: float, mean_service_s: float, servers: int, cv: float = 1.0) -> Wait:
    """The wait of a step at ``servers`` slots fed Poisson ``arrivals_per_s``, service times
    of mean ``mean_service_s`` and coefficient of variation ``cv`` (Allen-Cunneen)."""
    if arrivals_per_s <= 0 or mean_service_s <= 0:
        return NO_WAIT
    if servers <= 0:
        return Wait(math.inf, 1.0, math.inf, math.inf, math.inf)
    load = arrivals_per_s * mean_service_s  # offered load in erlangs
    rho = load / servers
    if rho >= 1:
        return Wait(rho, 1.0, math.inf, math.inf, math.inf)
    # Erlang C through the Erlang B recursion (stable for large server counts)
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    c = b / (1 - rho * (1 - b))
    drain = servers / mean_service_s - arrivals_per_s  # rate at which the queue empties
    theta = (1 + cv * cv) / 2 / drain  # a wait's mean, given that there is one
    p95 = math.log(c / (1 - P95)) * theta if c > 1 - P95 else 0.0
    return Wait(rho, c, c * theta, p95, c * theta * theta * (2 - c))


def mixed_cv(items: list[tuple[float, float, float]]) -> float:
    """The coefficient of variation of a class's service time, a mix of steps given as
    (rate, mean time, cv): E[S^2] / E[S]^2 - 1 over the mix."""
    rate = sum(r for r, _, _ in items)
    if rate <= 0:
        return 0.0
    mean = sum(r * t for r, t, _ in items) / rate
    second = sum(r * t * t * (1 + cv * cv) for r, t, cv in items) / rate
    return math.sqrt(max(0.0, second / (mean * mean) - 1)) if mean > 0 else 0.0


def quantiles(fixed: float, mean: float, var: float) -> tuple[float, float]:
    """Median and p95 of ``fixed`` plus a random part of ``mean`` and ``var`` (a gamma)."""
    if math.isinf(mean) or math.isinf(var):
        return math.inf, math.inf
    if var <= 1e-18 or mean <= 0:
        return fixed + mean, fixed + mean
    shape, scale = mean * mean / var, var / mean
    return (
        fixed + float(gammaincinv(shape, 0.5)) * scale,
        fixed + float(gammaincinv(shape, P95)) * scale,
    )
