"""Which event loop for `fleet simulate`: a plain heapq loop against simpy, on the same
M/M/c queue (Poisson arrivals, c servers, FIFO). Prints events per second of each and the
ratio. simpy is not a dependency: `pip install simpy` to run this comparison.

    python bench/sim_loop.py [--customers 200000] [--servers 8]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time
from collections import deque


def heap_loop(n: int, c: int, lam: float, mu: float, seed: int) -> float:
    rng = random.Random(seed)
    events: list[tuple[float, int, int]] = []
    t, seq = 0.0, 0
    for _ in range(n):
        t += rng.expovariate(lam)
        events.append((t, seq, 0))
        seq += 1
    heapq.heapify(events)
    free, waiting, total_wait = c, deque(), 0.0
    while events:
        now, _, kind = heapq.heappop(events)
        if kind == 0:
            if free:
                free -= 1
                heapq.heappush(events, (now + rng.expovariate(mu), seq, 1))
                seq += 1
            else:
                waiting.append(now)
        elif waiting:
            total_wait += now - waiting.popleft()
            heapq.heappush(events, (now + rng.expovariate(mu), seq, 1))
            seq += 1
        else:
            free += 1
    return total_wait / n


def simpy_loop(n: int, c: int, lam: float, mu: float, seed: int) -> float:
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    waits: list[float] = []

    def customer(env: simpy.Environment) -> object:
        arrived = env.now
        with servers.request() as req:
            yield req
            waits.append(env.now - arrived)
            yield env.timeout(rng.expovariate(mu))

    def source(env: simpy.Environment) -> object:
        for _ in range(n):
            yield env.timeout(rng.expovariate(lam))
            env.process(customer(env))

    env.process(source(env))
    env.run()
    return sum(waits) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--servers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    lam, mu = a.servers * 0.8, 1.0  # 80 % utilisation
    rates: dict[str, list[float]] = {"heapq": [], "simpy": []}
    for r in range(a.rounds):
        for name, fn in (("heapq", heap_loop), ("simpy", simpy_loop)):
            start = time.perf_counter()
            wait = fn(a.customers, a.servers, lam, mu, r)
            rates[name].append(a.customers / (time.perf_counter() - start))
            print(f"round {r} {name:5}: {rates[name][-1]:,.0f} customers/s (mean wait {wait:.3f})")
    h, s = statistics.median(rates["heapq"]), statistics.median(rates["simpy"])
    print(f"median: heapq {h:,.0f}/s, simpy {s:,.0f}/s, heapq/simpy = {h / s:.1f}x")


if __name__ == "__main__":
    main()
