"""Measured profiles: how long op *i* takes on class *j*, and how that grows with its work.

A profile is a latency model ``seconds = fixed_s + per_unit_s * units`` per (op, class), plus
peak memory and throughput, fitted by ``fleet profile`` from runs on the live workers and kept
in a JSON file (``FLEET_PROFILES``; the project ships ``fleet/data/profiles.json``). Completed
steps refine it online: each keeps an exponential moving average, in Redis, of the ratio of
observed to predicted run time per (op, class), shared by every process that routes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis

from fleet.constants import ONLINE_PROFILE_KEY as ONLINE_KEY
from fleet.constants import PROFILES_ENV
from fleet.paths import DATA

PACKAGED = DATA / "profiles.json"
ALPHA = 0.2  # weight of the newest observation in the moving averages


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


# Moving averages: for each (field, value) pair in ARGV[2..], new = a * value + (1 - a) * old.
_OBSERVE = """
local a = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local new = tonumber(ARGV[i + 1])
  if old then new = a * new + (1 - a) * tonumber(old) end
  redis.call('HSET', KEYS[1], ARGV[i], tostring(new))
end
return 1
"""


class OnlineStats:
    """Moving averages of observed run times, shared through one Redis hash.

    Fields: ``<op>|<cls>|s`` (seconds per step), ``<op>|<cls>|ratio`` (observed over the
    profile's prediction) and ``*|<cls>|s``, updated atomically by one small Lua script.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def queue(pipe: Any, op: str, cls: str, seconds: float, predicted: float | None) -> None:
        """Add the update to a pipeline (a finished step sends it with its other writes)."""
        args: list[Any] = [ALPHA, f"{op}|{cls}|s", seconds, f"*|{cls}|s", seconds]
        if predicted and predicted > 0:
            args += [f"{op}|{cls}|ratio", min(max(seconds / predicted, 0.05), 20.0)]
        pipe.eval(_OBSERVE, 1, ONLINE_KEY, *args)

    def observe(self, op: str, cls: str, seconds: float, predicted: float | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.queue(pipe, op, cls, seconds, predicted)
        pipe.execute()

    def read(self) -> dict[str, float]:
        raw = self.client.hgetall(ONLINE_KEY)
        return {_s(k): float(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
