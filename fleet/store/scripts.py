"""The run store's Lua scripts: a run's end, and the claims that let each step out once."""

from __future__ import annotations

from collections.abc import Mapping

from fleet.constants import INPUTS, LATENCY_BUCKETS, LISTEN_FIELD
from fleet.store.events import lua_append_args, lua_xadd
from fleet.store.lua import Lua

# End a run once: the first writer sets finished_at and its fields, wakes the waiters, takes
# the replies owed to Celery (KEYS[4]), leaves the active runs (KEYS[5], the orphan check's)
# and adds the run to its workflow's counters (KEYS[3], read by `fleet metrics`) -- exactly
# once. KEYS[6..8]: the run's working state every run has (outputs, claims, leases), then what
# few runs have (losses, starts, waits, signals), then its events (last): each kept for
# ARGV[3] s more. ARGV: lifetime, now, that, buckets, run id, n, then n step events appended
# before the end while the run is followed (the step that ends it: the record's own check
# for followers, made here), then field, value, ... Returns 0, or {1, reply field, reply, ...}.
END_SCRIPT = Lua(
    """
local n = tonumber(ARGV[6])
local mark = tonumber(redis.call('HGET', KEYS[1], '"""
    + LISTEN_FIELD
    + """'))
local followed = mark and mark >= tonumber(ARGV[2])
if followed and n > 0 then
  for i = 7, 6 + n do
    """
    + lua_xadd("KEYS[#KEYS]", "ARGV[i]")
    + """
  end
  redis.call('EXPIRE', KEYS[#KEYS], ARGV[1])
end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2]) == 0 then return 0 end
if #ARGV > 6 + n then redis.call('HSET', KEYS[1], unpack(ARGV, 7 + n)) end
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local replies = redis.call('HGETALL', KEYS[4])
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[5])
for i = 6, 8 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
if redis.call('EXISTS', unpack(KEYS, 9, #KEYS)) > 0 then  -- (most runs have none of these)
  for i = 9, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
local run = redis.call('HMGET', KEYS[1], 'workflow', 'status', 'submitted_at', 'meta', 'cost')
local wf, status = run[1] or '?', run[2] or '?'
local secs = tonumber(ARGV[2]) - (tonumber(run[3]) or tonumber(ARGV[2]))
local m = KEYS[3]
redis.call('HINCRBY', m, 'runs|' .. status .. '|' .. wf, 1)
redis.call('HINCRBY', m, 'count||' .. wf, 1)
redis.call('HINCRBYFLOAT', m, 'sum||' .. wf, secs)
for bound in string.gmatch(ARGV[4], '[^,]+') do  -- its bucket only: readers add them up
  if secs <= tonumber(bound) then
    redis.call('HINCRBY', m, 'bin|' .. bound .. '|' .. wf, 1)
    break
  end
end
local ok, meta = pcall(cjson.decode, run[4] or '{}')
if ok and type(meta) == 'table' and type(meta['sla_s']) == 'number' then
  redis.call('HINCRBY', m, 'sla||' .. wf, 1)
  if secs > meta['sla_s'] or status ~= 'succeeded' then
    redis.call('HINCRBY', m, 'sla_miss||' .. wf, 1)
  end
end
if tonumber(run[5]) then redis.call('HINCRBYFLOAT', m, 'cost||' .. wf, run[5]) end
if followed then
  """
    + lua_xadd(
        "KEYS[#KEYS]", "cjson.encode({event = 'end', status = status, at = tonumber(ARGV[2])})"
    )
    + """
  redis.call('EXPIRE', KEYS[#KEYS], ARGV[3])
end
table.insert(replies, 1, 1)
return replies
"""
)
BUCKETS = ",".join(repr(b) for b in LATENCY_BUCKETS)
RUN_ENDINGS = ("succeeded", "failed")


def workflow_counters(workflow: str) -> list[str]:
    """The fields of a workflow's counters in WORKFLOW_METRICS_KEY, as END_SCRIPT writes
    them."""
    names = [f"runs|{status}|{workflow}" for status in RUN_ENDINGS]
    names += [f"{kind}||{workflow}" for kind in ("count", "sum", "sla", "sla_miss", "cost")]
    return names + [f"bin|{b!r}|{workflow}" for b in LATENCY_BUCKETS]


def cumulative_buckets(counters: Mapping[str, float]) -> list[tuple[float, float]]:
    """A workflow's run-time histogram as Prometheus has one: for each bound of
    LATENCY_BUCKETS, the runs that took at most that long. ``counters``: the workflow's
    fields by ``kind|arg``. END_SCRIPT counts a run in its own bucket only (``bin|``: one
    write, where a cumulative histogram takes one per bucket); ``le|`` (cumulative) is
    what fleets before it wrote, added in."""
    found, below = [], 0.0
    for bound in LATENCY_BUCKETS:
        below += counters.get(f"bin|{bound!r}", 0.0)
        found.append((bound, below + counters.get(f"le|{bound!r}", 0.0)))
    return found


# Claim each path for ARGV[o + 1] unless another task holds it; the same task (a redelivered
# message keeps its id) gets its claims back, so a step that died after claiming re-sends.
# ARGV[o + 3] paths, then for each path the messages that send it, run at once if it is won
# and the run (KEYS[2]: its record) is running: a count of commands, then each command as
# name, argument count, arguments -- the broker's own (SENT_COMMANDS: a queue's LPUSH, an
# event's PUBLISH). KEYS[1]: the claims; ARGV[o + 2]: their lifetime. Returns the paths won.
SENT_COMMANDS = frozenset({"lpush", "pexpire", "publish"})
_CLAIM = """
local owner, n = ARGV[o + 1], tonumber(ARGV[o + 3])
local running = nil  -- read once, if there is something to send
local won = {}
local at = o + 4 + n
for i = 1, n do
  local path = ARGV[o + 3 + i]
  local mine = redis.call('HSETNX', KEYS[1], path, owner) == 1
     or redis.call('HGET', KEYS[1], path) == owner
  if mine then won[#won + 1] = path end
  local count = tonumber(ARGV[at])
  at = at + 1
  if mine and count > 0 and running == nil then
    running = redis.call('HGET', KEYS[2], 'status') == 'running'
  end
  for c = 1, count do
    local name, nargs = ARGV[at], tonumber(ARGV[at + 1])
    if mine and running then
      redis.call(name, unpack(ARGV, at + 2, at + 1 + nargs))
    end
    at = at + 2 + nargs
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[o + 2])
return won
"""
CLAIM_SCRIPT = Lua("local o = 0" + _CLAIM)

# Record a new run -- not over what is there: a submission tried again after a broker error
# leaves a run that went on (or ended) meanwhile as it is, and its latency from the first --
# then claim its first steps as CLAIM_SCRIPT does (its arguments after these). KEYS: claims,
# run, its outputs, the active runs (the orphan check's). ARGV: lifetime, submission time,
# workflow, meta (JSON), spec digest ('': none, and the run is not watched), inputs (JSON,
# '': none), run id.
CREATE_SCRIPT = Lua(
    f"""
local run, ttl, now = KEYS[2], ARGV[1], ARGV[2]
redis.call('HSET', run, 'workflow', ARGV[3], 'meta', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', run, 'spec', ARGV[5])
  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[7])
end
redis.call('HSETNX', run, 'status', 'running')
redis.call('HSETNX', run, 'submitted_at', now)
redis.call('EXPIRE', run, ttl)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], '{INPUTS}', ARGV[6])
  redis.call('EXPIRE', KEYS[3], ttl)
end
local o = 7"""
    + _CLAIM
)

# Record a finished step (RunStore.record_step): its outputs (KEYS[1]: the run's, field
# ARGV[2]), its trace entries (KEYS[2]) and, while the run is followed (KEYS[3]: its record's
# mark), its step events (KEYS[4]). ARGV: lifetime, path, outputs (JSON), n, m, then n trace
# entries, then m events (none where the run's end appends them).
_RECORD = (
    """
local ttl, n, m = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('RPUSH', KEYS[2], unpack(ARGV, 6, 5 + n))
redis.call('EXPIRE', KEYS[2], ttl)
if m > 0 then"""
    + lua_append_args("KEYS[3]", "KEYS[4]", "6 + n", "ttl", last="5 + n + m")
    + """end
"""
)
RECORD_SCRIPT = Lua(_RECORD + "return n\n")
RECORD_KEYS = 4  # (the record's keys, before those of a script that goes with it)
MAX_UNPACKED = 7000  # a script's arguments copied at once (Lua's unpack stops at 8000)


def _after_record(script: Lua) -> Lua:
    """``script``, run in the same script as a step's record, after it: called with the
    record's keys and arguments first, then its own (it sees only its own). A step's record
    and its claims, or its run's end, are one script where they were two."""
    own = f"""
local KEYS = {{unpack(KEYS, {RECORD_KEYS + 1})}}
local ARGV = {{unpack(ARGV, 6 + n + m)}}
"""
    return Lua(_RECORD + own + script.text)


RECORD_CLAIM_SCRIPT = _after_record(CLAIM_SCRIPT)
RECORD_END_SCRIPT = _after_record(END_SCRIPT)
AFTER_RECORD = {CLAIM_SCRIPT: RECORD_CLAIM_SCRIPT, END_SCRIPT: RECORD_END_SCRIPT}
