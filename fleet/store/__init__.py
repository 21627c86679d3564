"""Shared store: the run records and the blob and artifact stores in Redis, read and written
by clients and workers alike (its keys are in :mod:`fleet.constants`)."""
