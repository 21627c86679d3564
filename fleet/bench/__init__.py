"""The benchmark: arrivals, deployments and the harness that runs them on real local fleets
(:mod:`fleet.bench.harness`); its results flow one way into :mod:`fleet.bench.report`."""

# The job mixes the benchmark and the calibration can run (fleet.bench.arrivals.jobs).
MIXES = ("full", "quick", "sleeps")
