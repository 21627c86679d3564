"""The benchmark: arrivals, deployments and the harness that runs them on real local fleets
(:mod:`fleet.loadtest.harness`); its results flow one way into :mod:`fleet.loadtest.report`."""

# The job mixes the benchmark and the calibration can run (fleet.loadtest.arrivals.jobs).
MIXES = ("full", "quick", "sleeps")
