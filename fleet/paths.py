"""Where the package's own read-only files are, once installed: example workflows and their
data, the routing profiles and the hardware catalogue. One home, so nothing builds these
paths by hand."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
EXAMPLES = PACKAGE / "examples"  # workflow files, knowledge base, eval set, plan workloads
DATA = PACKAGE / "data"  # profiles*.json, catalogue.toml


def example(*parts: str) -> Path:
    """A packaged example file, e.g. ``example("voice_agent.yaml")``."""
    return EXAMPLES.joinpath(*parts)
