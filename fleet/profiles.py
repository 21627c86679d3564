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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis

PACKAGED = Path(__file__).parent / "data" / "profiles.json"
ONLINE_KEY = "fleet:profile:online"
ALPHA = 0.2  # weight of the newest observation in the moving averages

# What one unit of work is, per op: the router multiplies it by per_unit_s.
Units = Callable[[dict[str, Any]], float]


def _len(value: Any) -> float:
    return float(len(value)) if isinstance(value, list | str) else 1.0


UNITS: dict[str, Units] = {
    "llm.generate": lambda a: float(a.get("max_tokens", 64)),
    "llm.decode": lambda a: float(a.get("max_tokens", 64)),
    "llm.prefill": lambda a: _len(a.get("prompt", "")) / 4.0,  # ~4 characters a token
    "embed.texts": lambda a: _len(a.get("texts", [])) if isinstance(a.get("texts"), list) else 1.0,
    "test.sleep": lambda a: float(a.get("seconds", 0.0)),
    "speech.tts": lambda a: _len(a.get("text", "")),
}


def units_of(op: str, args: dict[str, Any]) -> float:
    try:
        return max(0.0, UNITS[op](args)) if op in UNITS else 1.0
    except (TypeError, ValueError):
        return 1.0


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

    def predict(self, units: float) -> float:
        return max(0.0, self.fixed_s + self.per_unit_s * units)


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


def profiles_path() -> Path:
    return Path(os.environ.get("FLEET_PROFILES") or PACKAGED).expanduser()


@cache
def _cached(path: str, mtime: float) -> ProfileStore:
    return ProfileStore.load(Path(path))


def current_store() -> ProfileStore:
    """The profile file in force, re-read when it changes."""
    path = profiles_path()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _cached(str(path), mtime)


_OBSERVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = tonumber(ARGV[2])
if old then new = tonumber(ARGV[3]) * new + (1 - tonumber(ARGV[3])) * tonumber(old) end
redis.call('HSET', KEYS[1], ARGV[1], tostring(new))
return tostring(new)
"""


class OnlineStats:
    """Moving averages of observed run times, shared through one Redis hash.

    Fields: ``<op>|<cls>|s`` (seconds per step) and ``<op>|<cls>|ratio`` (observed over the
    profile's prediction), updated atomically by a small Lua script.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(_OBSERVE)

    def observe(self, op: str, cls: str, seconds: float, predicted: float | None) -> None:
        self._script(keys=[ONLINE_KEY], args=[f"{op}|{cls}|s", seconds, ALPHA])
        if predicted and predicted > 0:
            ratio = min(max(seconds / predicted, 0.05), 20.0)
            self._script(keys=[ONLINE_KEY], args=[f"{op}|{cls}|ratio", ratio, ALPHA])
        self._script(keys=[ONLINE_KEY], args=[f"*|{cls}|s", seconds, ALPHA])

    def read(self) -> dict[str, float]:
        raw = self.client.hgetall(ONLINE_KEY)
        return {_s(k): float(v) for k, v in raw.items()}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
