"""Start leases: which copy of a step runs its op, and whether an earlier start's worker died.

A step's message can arrive more than once: a broker redelivers what a lost connection held,
a publisher that lost its confirm publishes again (RabbitMQ then holds two copies, delivered
together), the sweeper and the orphan check put back what looked stranded. A copy that finds
the step's outputs recorded does not run (``RunStore.begin``'s ``ran``); the lease covers the
copies that arrive *while* another runs, and tells a dead holder from a live one:

- the copy that starts a step (per attempt) takes its lease: ``holder token|expiry`` in the
  run's ``leases`` hash. The holder's process renews it while the op runs
  (:mod:`workers.lease_keeper`), every third of ``start_lease_s``;
- a copy that finds a live lease is a duplicate: it does not run the op now (it is sent
  again for when the lease would lapse, so that a holder that dies later is still covered);
- a copy that finds a lapsed lease asks first whether its holder is alive (a ``judge``:
  :mod:`workers.holders` looks its process up on the same machine, its worker's heartbeat
  on another). A holder known alive only stalled (paused, or a thread held the GIL past the
  lease): the copy is held as beside a live lease, and does not run the op beside it;
- otherwise the copy takes the lease over: the holder stopped renewing -- its process died
  (or cannot be told from a dead one). Each takeover is counted with the run (``starts``):
  past ``max_worker_losses`` the step fails its run instead of killing worker after worker.
  A holder taken for dead that was only stalled finds, when it renews or ends, that its
  lease was taken: its takeover is not counted any more -- a dead holder never comes back to
  say so, so stalls one after another no longer add up to a "death";
- a pool child's death is seen by its worker's main process, which counts it as a loss
  (``RunStore.count_loss``) and marks the lease ``lost``: the requeued copy takes it at
  once, without counting the same death twice;
- a step that ends by a retry marks its lease ``done``: a late copy of that attempt does
  not run (the retry's own message carries the next attempt).

Times are the Redis server's (``TIME``), so workers' clocks need not agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from fleet.constants import RUN_KEY, RUN_LEASES_KEY, RUN_OUTPUTS_KEY, RUN_STARTS_KEY
from fleet.store.events import events_key, lua_append
from fleet.store.lua import Lua

log = logging.getLogger("fleet.leases")
Verdict = Literal["run", "held", "ended", "skip"]

# KEYS: run, out, leases, starts. ARGV: path, field, token, lease_s, ttl, group (1: an item
# of a map, which runs again even when recorded), the worker, ask (1: a lapsed lease is not
# taken over but returned -- 'lapsed', with its value -- for its holder to be judged first;
# 2: taken over uncounted, its holder known to live without the step);
# KEYS[5]: the run's events; ARGV[9] (1: the run's state too, for a copy that runs the step).
# Returns {status, ran, verdict, takeovers, seconds until a live lease lapses, listened to
# [, the outputs hash as a flat list]}: a copy that runs the step publishes its start while
# somebody listens (fleet.store.events).
_BEGIN = (
    """
local status = redis.call('HGET', KEYS[1], 'status') or ''
local ran = redis.call('HEXISTS', KEYS[2], ARGV[1])
if status == 'failed' or (ran == 1 and ARGV[6] == '0') then
  return {status, ran, 'skip', 0, '0'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cur = redis.call('HGET', KEYS[3], ARGV[2])
local taken = 0
if cur and ran == 0 then
  if cur == 'done' then return {status, ran, 'ended', 0, '0'} end
  if string.sub(cur, 1, #ARGV[3] + 1) == ARGV[3] .. '|' then
    cur = nil  -- this copy's own lease: a round trip tried again after its reply was lost
  end
end
if cur and ran == 0 then
  if cur ~= 'lost' then
    local expiry = tonumber(string.match(cur, '|([^|]*)$')) or 0
    if expiry > now then return {status, ran, 'held', 0, string.format('%.3f', expiry - now)} end
    if ARGV[8] == '1' then return {status, ran, 'lapsed', 0, '0', 0, cur} end
    if ARGV[8] ~= '2' then  -- (2: its holder lives and does not hold the step: uncounted)
      taken = redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
      redis.call('EXPIRE', KEYS[4], ARGV[5])
    end
  end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. '|' .. string.format('%.3f', now + ARGV[4]))
redis.call('EXPIRE', KEYS[3], ARGV[5])
local listened = 0
"""
    + lua_append(
        "KEYS[1]",
        "KEYS[5]",
        "{event = 'started', node = ARGV[1], worker = ARGV[7], at = now}",
        "ARGV[5]",
        "now",
        then="listened = 1",
    )
    + """
if ARGV[9] == '1' then
  return {status, ran, 'run', taken, '0', listened, redis.call('HGETALL', KEYS[2])}
end
return {status, ran, 'run', taken, '0', listened}
"""
)

# KEYS: the leases and starts hashes of each lease, in pairs. ARGV: lease_s, ttl, then (field,
# token) per lease. A lease held by its token, or gone (its run's state expired), is
# extended; the indexes (1-based) of those another copy took over are returned. A holder that
# renews a lease taken over from it was alive: it stalled (paused, or a thread held the GIL
# past the lease), it did not die -- the takeover's count is taken back.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lost = {}
for i = 1, #KEYS / 2 do
  local key, starts = KEYS[2 * i - 1], KEYS[2 * i]
  local field, token = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local cur = redis.call('HGET', key, field)
  if not cur or string.sub(cur, 1, #token + 1) == token .. '|' then
    redis.call('HSET', key, field, token .. '|' .. string.format('%.3f', now + ARGV[1]))
    redis.call('EXPIRE', key, ARGV[2])
  else
    lost[#lost + 1] = i
    local counted = tonumber(redis.call('HGET', starts, field) or '0')
    if string.find(cur, '|', 1, true) and counted > 0 then
      redis.call('HINCRBY', starts, field, -1)
    end
  end
end
return lost
"""

# KEYS: leases. ARGV: field, mark ('done' or 'lost'), ttl, holder token ('' for any). 'lost'
# leaves a 'done' alone; given a token, only that holder's lease is marked.
_MARK = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == 'lost' and (not cur or cur == 'done') then return 0 end
if ARGV[4] ~= '' and string.sub(cur or '', 1, #ARGV[4] + 1) ~= ARGV[4] .. '|' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Begin:
    """What a copy of a step found when it began.

    ``verdict``: ``run`` (it holds the lease now: run the op), ``held`` (another live copy
    holds it: not now, again in ``wait_s``), ``ended`` (that attempt ended in a retry) or
    ``skip`` (the run failed, or the step's outputs are recorded)."""

    status: str | None
    ran: bool
    verdict: Verdict
    takeovers: int  # leases of this attempt taken over from a holder that stopped renewing
    wait_s: float
    listened: bool = False  # somebody listens to the run's events (the start was published)
    stalled: str = ""  # held: the holder whose lease lapsed, known alive (it stalled)
    # run, when asked: every step's outputs (and the inputs) as it began, JSON by path
    state: dict[str, str] | None = None


IDLE: Literal["idle"] = "idle"  # a judged holder that lives, but does not hold the step
Judged = bool | None | Literal["idle"]
Judge = Callable[[str, tuple[str, str]], Judged]


def lease_field(path: str, attempt: int) -> str:
    return f"{path}@{attempt}"


BEGIN_SCRIPT = Lua(_BEGIN)
_RENEW_SCRIPT = Lua(_RENEW)
_MARK_SCRIPT = Lua(_MARK)


def begin_call(
    run_id: str,
    path: str,
    attempt: int,
    token: str,
    group: bool,
    worker: str,
    ask: bool,
    state: bool,
    lease_s: float,
    ttl: int,
) -> tuple[list[str], list[str | float | int]]:
    """The keys and arguments of the begin script (``Leases.begin``) for a copy of step
    ``path``: here, or in another round trip (a worker's main process takes the lease as it
    receives the message: :mod:`workers.receipt`). ``ask``: a lapsed lease is returned, not
    taken over (its holder is judged first)."""
    keys = [
        RUN_KEY.format(id=run_id),
        RUN_OUTPUTS_KEY.format(id=run_id),
        RUN_LEASES_KEY.format(id=run_id),
        RUN_STARTS_KEY.format(id=run_id),
        events_key(run_id),
    ]
    args: list[str | float | int] = [path, lease_field(path, attempt), token, lease_s, ttl]
    args += [int(group), worker, int(ask), int(state)]
    return keys, args


def read_begin(found: list[Any]) -> Begin | None:
    """What the begin script's reply says (its strings as ``str``); None for a lapsed
    lease (asked: its holder is to be judged, nothing was taken)."""
    found = [read_text(v) for v in found]
    if found[2] == "lapsed":
        return None
    status, ran, verdict, taken, wait = found[:5]
    flat = found[6] if len(found) > 6 and verdict == "run" else None
    return Begin(
        status=str(status) or None,
        ran=bool(int(ran)),
        verdict=cast(Verdict, str(verdict)),
        takeovers=int(taken),
        wait_s=float(wait),
        listened=len(found) > 5 and bool(int(found[5])),
        state=None if flat is None else dict(zip(flat[::2], flat[1::2], strict=True)),
    )


def read_text(value: Any) -> Any:
    """A reply's bytes as text, in lists too (a client without ``decode_responses``)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [read_text(v) for v in value]
    return value


class Leases:
    """The start leases of steps, in the run store's Redis."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: int,
        lease_s: float,
        judge: Judge | None = None,
    ) -> None:
        """``judge``: given the token of a lapsed lease's holder and the step (run id, node
        path), True if it is known alive and holding the step (it stalled: its lease is not
        taken over), False if known dead, None if it cannot be told (both taken over, and
        counted), ``"idle"`` if it lives but does not hold the step (a worker that took the
        lease as it received the message, and dropped the message unstarted: taken over,
        not counted). Without one every lapse counts as a death."""
        self.redis = client
        self.ttl = ttl
        self.lease_s = lease_s
        self.judge = judge

    def begin(
        self,
        run_id: str,
        path: str,
        attempt: int,
        token: str,
        group: bool,
        worker: str = "",
        state: bool = False,
    ) -> Begin:
        """For a copy of step ``path`` about to run, in one round trip: the run's status,
        whether the step recorded its outputs, whether this copy runs it, and whether
        somebody listens to the run (its start is published then). ``state``: a copy that
        runs the step also gets the run's outputs so far (a step that may be the run's last:
        it can end the run as it records, :meth:`RunStore.record_step`)."""
        ask = self.judge is not None
        keys, args = begin_call(
            run_id, path, attempt, token, group, worker, ask, state, self.lease_s, self.ttl
        )
        found = cast(list[str], BEGIN_SCRIPT.run(self.redis, keys, args))
        if found[2] == "lapsed":  # rare: a holder stopped renewing; is it dead?
            holder = str(found[6]).rpartition("|")[0]
            judged = self._judged(run_id, path, lease_field(path, attempt), holder)
            if judged is True:
                return Begin(
                    status=str(found[0]) or None,
                    ran=bool(int(found[1])),
                    verdict="held",
                    takeovers=0,
                    wait_s=self.lease_s / 2,  # asked again then: it may have come back
                    stalled=holder,
                )
            # take it over (the script looks again: it may be back meanwhile), counted
            # unless its holder lives on without the step
            args[7] = 2 if judged == IDLE else 0
            found = cast(list[str], BEGIN_SCRIPT.run(self.redis, keys, args))
        read = read_begin(found)
        assert read is not None  # (not asked: a lapsed lease is taken over)
        return read

    def _judged(self, run_id: str, path: str, field: str, holder: str) -> Judged:
        assert self.judge is not None
        try:
            judged = self.judge(holder, (run_id, path))
        except Exception as exc:  # cannot be told: taken for dead, as without a judge
            log.warning(
                "run %s: step %s: could not judge holder %s: %s", run_id, field, holder, exc
            )
            return False
        if judged is not True:
            how = {False: "dead", IDLE: "alive without the step"}.get(judged, "not known alive")
            log.warning(
                "run %s: step %s: its holder %s is %s: taken over", run_id, field, holder, how
            )
        return judged

    def renew(self, held: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Extend the leases ``held`` as (run id, field, token); those another copy took
        over (this holder was taken for dead) are returned, and their takeovers are not
        counted as deaths any more: this holder is alive (``max_worker_losses``)."""
        if not held:
            return []
        keys = []
        for run_id, _, _ in held:
            keys += [RUN_LEASES_KEY.format(id=run_id), RUN_STARTS_KEY.format(id=run_id)]
        args: list[str | float | int] = [self.lease_s, self.ttl]
        for _, field, token in held:
            args += [field, token]
        lost = cast(list[int], _RENEW_SCRIPT.run(self.redis, keys, args))
        return [held[int(i) - 1] for i in lost]

    def mark(self, run_id: str, field: str, mark: Literal["done", "lost"], token: str = "") -> bool:
        """``done``: that attempt ended (a retry was sent); ``lost``: its holder died and the
        death was counted already (a pool child: ``RunStore.count_loss``), or it let go of
        the step unfinished. Given ``token``, only while that holder holds it (not a lease
        another copy took over). Whether it was marked."""
        args: list[str | int] = [field, mark, self.ttl, token]
        return bool(_MARK_SCRIPT.run(self.redis, [RUN_LEASES_KEY.format(id=run_id)], args))
