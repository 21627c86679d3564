"""A StateReader that returns a fixed, constructed fleet state (no Redis), counting reads."""

from __future__ import annotations

from fleet.config import FleetConfig
from fleet.routing.state import FleetState, StateReader


class FixedReader(StateReader):
    def __init__(self, cfg: FleetConfig, state: FleetState) -> None:
        super().__init__(cfg)
        self.state = state
        self.reads = 0

    def read(self) -> FleetState:
        self.reads += 1
        return self.state
