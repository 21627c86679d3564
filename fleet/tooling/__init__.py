"""Tooling on top of the fleet: the demo, the benchmark, profiling, and their commands."""
