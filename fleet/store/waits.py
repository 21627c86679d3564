"""What a parked run holds in Redis: the nodes it waits on, the signals sent before a node
waited for them, and when each wait times out.

A run that reaches a wait node holds no message and no worker slot: one field in the run's
waits hash (``RUN_WAITS_KEY``: path -> {op, name, since, until, on_timeout}) and, when the wait
has an end, one member of the fleet-wide ``WAITS_DUE_KEY`` sorted set that the sweep reads.
Each change is one Lua script, so that a signal, a timeout and a park racing each other settle
a wait exactly once, and the node's outputs are written in the same step as the wait is
taken (a process that dies after it leaves a run the orphan check can move on, never a lost
signal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from fleet.constants import RUN_KEY, RUN_OUTPUTS_KEY, RUN_SIGNALS_KEY, RUN_WAITS_KEY, WAITS_DUE_KEY
from fleet.store.lua import Lua

# KEYS: run, waits, signals, due, out. ARGV: path, signal name ('' for a timer), the wait's
# record (JSON), until ('' for none), due member, ttl.
# Returns {0}: nothing to do (the run ended, the node ran or already waits); {1}: parked;
# {2}: a signal kept for it was taken and the node's outputs written.
_PARK = Lua(
    """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {0} end
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return {0} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {0} end
if ARGV[2] ~= '' then
  local kept = redis.call('HGET', KEYS[3], ARGV[2])
  if kept then
    local list = cjson.decode(kept)
    local first = table.remove(list, 1)
    if #list == 0 then redis.call('HDEL', KEYS[3], ARGV[2])
    else redis.call('HSET', KEYS[3], ARGV[2], cjson.encode(list)) end
    redis.call('HSET', KEYS[5], ARGV[1], '{"data":' .. first .. ',"timed_out":false}')
    return {2}
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5]) end
return {1}
"""
)

# KEYS: run, waits, signals, due, out. ARGV: name, payload (JSON), run id, ttl, most kept.
# The oldest wait on ``name`` takes the payload as its output ``data``; with none waiting,
# the payload is kept (FIFO) for the next node that waits on the name.
_SIGNAL = Lua(
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
if status ~= 'running' then return {'ended', status} end
local best, since = nil, nil
local waits = redis.call('HGETALL', KEYS[2])
for i = 1, #waits, 2 do
  local w = cjson.decode(waits[i + 1])
  if w['name'] == ARGV[1] and (since == nil or w['since'] < since) then
    best, since = waits[i], w['since']
  end
end
if best then
  redis.call('HDEL', KEYS[2], best)
  redis.call('ZREM', KEYS[4], ARGV[3] .. '|' .. best)
  redis.call('HSET', KEYS[5], best, '{"data":' .. ARGV[2] .. ',"timed_out":false}')
  return {'resumed', best, tostring(since)}
end
local kept = redis.call('HGET', KEYS[3], ARGV[1])
local list = {}
if kept then list = cjson.decode(kept) end
if #list >= tonumber(ARGV[5]) then return {'full', tostring(#list)} end
table.insert(list, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(list))
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {'kept'}
"""
)

# KEYS: due, run, waits, out. ARGV: due member, path, outputs of a signal wait that timed
# out, outputs of a timer (JSON). Returns {0} (taken by another, or the run ended), {1, wait}
# (outputs written), {2, wait} (nothing reads the timeout: the caller fails the run).
_TIMEOUT = Lua(
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {0} end
local raw = redis.call('HGET', KEYS[3], ARGV[2])
if not raw then return {0} end
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return {0} end
local w = cjson.decode(raw)
if w['op'] == 'wait.signal' then
  if w['on_timeout'] ~= 'branch' then return {2, raw} end
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
else
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
end
return {1, raw}
"""
)


@dataclass(frozen=True)
class Wait:
    """One node a run waits on."""

    path: str
    op: str
    name: str | None  # the signal it waits for (wait.signal)
    since: float
    until: float | None
    on_timeout: str = "fail"

    def to_json(self) -> str:
        doc = {"op": self.op, "name": self.name, "since": self.since, "until": self.until}
        return json.dumps({**doc, "on_timeout": self.on_timeout})

    @classmethod
    def from_json(cls, path: str, raw: str) -> Wait:
        doc = json.loads(raw)
        return cls(path, doc["op"], doc.get("name"), float(doc["since"]), doc.get("until"),
                   doc.get("on_timeout", "fail"))  # fmt: skip


@dataclass(frozen=True)
class Signalled:
    """What a signal did: ``resumed`` a waiting node (``path``), or was ``kept`` for one."""

    outcome: str
    path: str | None = None
    since: float | None = None


class WaitStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis, self.ttl = client, ttl

    @staticmethod
    def _keys(run_id: str) -> list[str]:
        return [
            RUN_KEY.format(id=run_id),
            RUN_WAITS_KEY.format(id=run_id),
            RUN_SIGNALS_KEY.format(id=run_id),
            WAITS_DUE_KEY,
            RUN_OUTPUTS_KEY.format(id=run_id),
        ]

    def park(self, run_id: str, wait: Wait) -> int:
        """Park ``wait``: 1 parked, 2 resumed at once by a signal kept for it (its outputs
        written), 0 nothing to do (the run ended, or the node ran or waits already)."""
        member = f"{run_id}|{wait.path}"
        until = "" if wait.until is None else repr(wait.until)
        args: list[str | int] = [wait.path, wait.name or "", wait.to_json(), until, member]
        args.append(self.ttl)
        found = _PARK.run(self.redis, self._keys(run_id), args)
        return int(cast(list[Any], found)[0])

    def signal(self, run_id: str, name: str, payload: str, most_kept: int) -> Signalled:
        """Send a signal (``payload``: JSON text); raise LookupError for an unknown run,
        ValueError for an ended one or one holding ``most_kept`` unread signals of ``name``."""
        args: list[str | int] = [name, payload, run_id, self.ttl, most_kept]
        result = _SIGNAL.run(self.redis, self._keys(run_id), args)
        found = [str(x) for x in cast(list[Any], result)]
        if found[0] == "unknown":
            raise LookupError(f"no run {run_id} (unknown, or its record expired)")
        if found[0] == "ended":
            raise ValueError(f"run {run_id} has ended ({found[1]}): nothing waits for a signal")
        if found[0] == "full":
            raise ValueError(
                f"run {run_id} already holds {found[1]} signal(s) '{name}' that no node has "
                "taken yet"
            )
        if found[0] == "resumed":
            return Signalled("resumed", found[1], float(found[2]))
        return Signalled("kept")

    def waits(self, run_id: str) -> list[Wait]:
        """The nodes ``run_id`` waits on now, oldest first."""
        raw = cast(dict[str, str], self.redis.hgetall(RUN_WAITS_KEY.format(id=run_id)))
        return sorted((Wait.from_json(p, r) for p, r in raw.items()), key=lambda w: w.since)

    def kept(self, run_id: str) -> dict[str, int]:
        """Signals sent before a node waited for them: name -> how many."""
        raw = cast(dict[str, str], self.redis.hgetall(RUN_SIGNALS_KEY.format(id=run_id)))
        return {name: len(json.loads(v)) for name, v in raw.items()}

    def due(self, now: float, limit: int = 200) -> list[tuple[str, str]]:
        """(run id, path) of waits whose time has come, oldest first."""
        found = self.redis.zrangebyscore(WAITS_DUE_KEY, "-inf", now, start=0, num=limit)
        return [cast(tuple[str, str], tuple(str(m).split("|", 1))) for m in found]

    def time_out(self, run_id: str, path: str, at: float) -> tuple[int, Wait | None]:
        """Take a due wait: (1, wait) its outputs written (a timer's ``at``, or a signal's
        ``timed_out``); (2, wait) nothing reads the timeout (fail the run); (0, None) another
        took it or the run ended."""
        keys = [WAITS_DUE_KEY, RUN_KEY.format(id=run_id), RUN_WAITS_KEY.format(id=run_id)]
        keys.append(RUN_OUTPUTS_KEY.format(id=run_id))
        timed_out = json.dumps({"data": None, "timed_out": True})
        args = [f"{run_id}|{path}", path, timed_out, json.dumps({"at": at})]
        found = cast(list[Any], _TIMEOUT.run(self.redis, keys, args))
        code = int(found[0])
        return code, Wait.from_json(path, str(found[1])) if code else None
