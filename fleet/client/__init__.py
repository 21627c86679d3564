"""The client: :class:`Fleet` validates, uploads, submits and follows runs
(:class:`RunHandle`); :mod:`fleet.client.uploads` moves files in and out by reference."""

from fleet.client.client import Fleet, RunHandle

__all__ = ["Fleet", "RunHandle"]
