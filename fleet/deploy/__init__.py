"""What an operator runs: a local fleet (``fleet up``), the worker command line and
environment per class, the host doctor and GPU check, the Prometheus exporter, and profiling
ops on the live workers."""
