"""The simulator checked against the live fleet: profile each workflow alone, run the
benchmark's arrivals, simulate the same arrivals on a model of this machine, compare."""

# How close the simulator must come to the live fleet (relative error of p50 and p95).
P50_BOUND, P95_BOUND = 0.15, 0.25
