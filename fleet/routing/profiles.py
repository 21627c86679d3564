"""Measured profiles: how long op *i* takes on class *j*, and how that grows with its work.

A profile is a latency model ``seconds = fixed_s + per_unit_s * units`` per (op, class), plus
peak memory and throughput, fitted by ``fleet profile`` from runs on the live workers and kept
in a JSON file (``FLEET_PROFILES``; the project ships ``fleet/data/profiles.json``). Completed
steps refine it online: each keeps an exponential moving average, in Redis, of the ratio of
observed to predicted run time per (op, class), shared by every process that routes
(:mod:`fleet.routing.online`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from fleet.constants import PROFILES_ENV
from fleet.paths import DATA

PACKAGED = DATA / "profiles.json"


@dataclass(frozen=True)
class OpProfile:
    op: str
    cls: str
    fixed_s: float
    per_unit_s: float = 0.0
    unit: str = "call"
    peak_mem_mb: float | None = None
    throughput: float | None = None  # steps per second one worker slot sustains
    samples: int = 0
    measured_at: float | None = None
    # On a batching class (a thread pool on an accelerator, whose steps share one process):
    # throughput with k steps at once over one at a time, for the k measured ({"8": 1.88}).
    batch: dict[str, float] | None = None

    def predict(self, units: float, occupancy: int = 1, takes_turns: bool = False) -> float:
        """Seconds for one step while ``occupancy`` steps (itself included) share its
        process: they share its throughput, so each takes k / speedup(k) times as long."""
        alone = max(0.0, self.fixed_s + self.per_unit_s * units)
        return shared_time(alone, self.batch, occupancy, takes_turns)

    def speedup(self, occupancy: int, takes_turns: bool = False) -> float:
        return batch_speedup(self.batch, occupancy, takes_turns)


def shared_time(
    alone: float, batch: dict[str, float] | None, occupancy: int, takes_turns: bool = False
) -> float:
    """A step's time while ``occupancy`` steps (itself included) share its process: they
    share its throughput, so each takes k / speedup(k) as long as ``alone``."""
    if occupancy <= 1:
        return alone
    return alone * occupancy / batch_speedup(batch, occupancy, takes_turns)


def batch_speedup(
    batch: dict[str, float] | None, occupancy: int, takes_turns: bool = False
) -> float:
    """Throughput at ``occupancy`` steps at once in one process over one at a time: linear
    between the measured levels, flat past the last one. Not measured: 1 for an op that
    ``takes_turns`` (a model op: the process's model work takes turns), else ``occupancy`` (the
    steps wait on I/O or sleep side by side and do not slow each other)."""
    if occupancy <= 1:
        return 1.0
    if not batch:
        return 1.0 if takes_turns else float(occupancy)
    points = sorted([(1, 1.0), *((int(k), float(v)) for k, v in batch.items())])
    lo_k, lo_v = points[0]
    for k, v in points[1:]:
        if occupancy <= k:
            return lo_v + (v - lo_v) * (occupancy - lo_k) / (k - lo_k) if k > lo_k else v
        lo_k, lo_v = k, v
    return max(lo_v, 1.0)


@dataclass
class ProfileStore:
    profiles: dict[tuple[str, str], OpProfile] = field(default_factory=dict)
    source: str | None = None

    def get(self, op: str, cls: str) -> OpProfile | None:
        return self.profiles.get((op, cls))

    def put(self, profile: OpProfile) -> None:
        self.profiles[(profile.op, profile.cls)] = profile

    def to_json(self) -> str:
        rows = [asdict(p) for _, p in sorted(self.profiles.items())]
        return json.dumps({"version": 1, "profiles": rows}, indent=1)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ProfileStore:
        if not path.is_file():
            return cls(source=str(path))
        data = json.loads(path.read_text())
        store = cls(source=str(path))
        for row in data.get("profiles", []):
            store.put(OpProfile(**row))
        return store


def user_profiles() -> Path:
    """Where `fleet profile` writes by default: the data folder, never the package."""
    base = os.environ.get("FLEET_DATA_DIR") or "~/.cache/agent-fleet"
    return Path(base).expanduser() / "profiles.json"


def profiles_path() -> Path:
    """FLEET_PROFILES: a file, or the name of a packaged set (``h100`` is
    fleet/data/profiles-h100.json); else what `fleet profile` measured on this host (in the
    data folder), else the packaged profiles of the development machine."""
    chosen = os.environ.get(PROFILES_ENV) or ""
    if chosen and "/" not in chosen and not chosen.endswith(".json"):
        return PACKAGED.with_name(f"profiles-{chosen}.json")
    if chosen:
        return Path(chosen).expanduser()
    mine = user_profiles()
    return mine if mine.is_file() else PACKAGED


@cache
def _cached(path: str, mtime: float) -> ProfileStore:
    return ProfileStore.load(Path(path))


_CHECK_EVERY_S = 1.0  # how often the profile file is looked at for changes
_checked: list[tuple[float, str, float]] = []  # (when, path, mtime) of the last look


def current_store() -> ProfileStore:
    """The profile file in force, re-read when it changes (looked at once a second: the
    router asks on every decision)."""
    now = time.monotonic()
    if not _checked or now - _checked[0][0] > _CHECK_EVERY_S:
        path = profiles_path()
        mtime = path.stat().st_mtime if path.is_file() else 0.0
        _checked[:] = [(now, str(path), mtime)]
    _, path_text, mtime = _checked[0]
    return _cached(path_text, mtime)
