"""A run's events as they happen: steps starting and ending, text an LLM step streams, the
run's end -- appended to the run's Redis stream, only while somebody follows the run.

A follower marks the run (``LISTEN_FIELD`` in its record: until when, refreshed while it
follows) -- at submission (``Fleet.submit(..., follow=True)``), or when it starts to follow.
Writers check the mark inside the commands they send anyway: a step's start lease
(:mod:`fleet.store.leases`), every trace entry (the pipeline that writes it) and the run's
end (its script). With nobody following, nothing is written and no round trip is added; with
a follower, an event is one ``XADD`` on the server. A stream rather than pub/sub: what was
written before the follower read it is still there (read from the first event), so a run
followed from its submission misses nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis

from fleet.constants import LISTEN_FIELD, RUN_EVENTS_KEY, RUN_KEY
from fleet.store.lua import Lua

LISTEN_S = 60  # how long a follower's mark lasts; it refreshes it every third of that
MAX_EVENTS = 10_000  # kept per run (about: the stream is trimmed lazily)
EVENT_FIELD = "e"  # each stream entry holds one event, JSON, in this field
EVENT_OUTPUTS_MAX = 4096  # a step event carries the step's outputs up to this much JSON


def lua_xadd(events: str, value: str) -> str:
    """Lua that appends one event (``value``, JSON) to the stream ``events`` (both Lua
    expressions), trimmed to about MAX_EVENTS."""
    return (
        f"redis.call('XADD', {events}, 'MAXLEN', '~', {MAX_EVENTS}, '*', '{EVENT_FIELD}', {value})"
    )


def _lua_followed(run: str, events: str, ttl: str, now: str, append: str, then: str) -> str:
    """Lua that runs ``append`` (appends to ``events``) while the run is followed (its
    record ``run`` holds a mark not past ``now``, seconds), then sets the events' lifetime
    and runs ``then``. Every script that appends a run's events checks it so."""
    return f"""
local mark = tonumber(redis.call('HGET', {run}, '{LISTEN_FIELD}'))
if mark and mark >= {now} then
  {append}
  redis.call('EXPIRE', {events}, {ttl})
  {then}
end
"""


def lua_append_args(
    run: str, events: str, first: str, ttl: str, then: str = "", last: str = "#ARGV"
) -> str:
    """Lua that appends the script's ``ARGV[first]`` to ``ARGV[last]`` (events, JSON) to the
    stream ``events`` while the run is followed (by Redis's clock); ``run``, ``events``,
    ``first``, ``last`` and ``ttl`` are Lua expressions of that script."""
    append = f"for i = {first}, {last} do {lua_xadd(events, 'ARGV[i]')} end"
    return _lua_followed(run, events, ttl, "tonumber(redis.call('TIME')[1])", append, then)


# KEYS: run, events. ARGV: ttl, then events (JSON). Appended while the run is followed.
NOTIFY = Lua(
    lua_append_args("KEYS[1]", "KEYS[2]", "2", "ARGV[1]", "return #ARGV - 1") + "return 0\n"
)


def lua_append(run: str, events: str, event: str, ttl: str, now: str, then: str = "") -> str:
    """The same as NOTIFY, as Lua for another script: ``run``, ``events``, ``ttl`` and
    ``now`` (seconds) are Lua expressions of that script, ``event`` a Lua table; ``then``:
    more Lua run when the event was appended."""
    append = lua_xadd(events, f"cjson.encode({event})")
    return _lua_followed(run, events, ttl, now, append, then)


def events_key(run_id: str) -> str:
    return RUN_EVENTS_KEY.format(id=run_id)


def notify(pipe: redis.client.Pipeline, run_id: str, ttl: int, events: list[str]) -> None:
    """Queue on ``pipe`` the appending of ``events`` (JSON): appended only while somebody
    follows the run (``pipe``: a store's, :class:`fleet.store.connection.Pipeline`)."""
    NOTIFY.queue(pipe, [RUN_KEY.format(id=run_id), events_key(run_id)], [ttl, *events])


def mark(pipe: Any, run_id: str) -> None:
    """Queue the mark that says somebody follows the run (for LISTEN_S seconds)."""
    pipe.hset(RUN_KEY.format(id=run_id), LISTEN_FIELD, repr(time.time() + LISTEN_S))


class Publisher:
    """Appends what one step streams (text chunks) to its followed run's events."""

    def __init__(self, client: redis.Redis, run_id: str, node: str, ttl: int) -> None:
        self.client, self.run_id, self.node, self.ttl = client, run_id, node, ttl

    def text(self, chunk: str) -> None:
        event = {"event": "text", "node": self.node, "text": chunk, "at": time.time()}
        data = json.dumps(event, separators=(",", ":"))
        key = events_key(self.run_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(key, {EVENT_FIELD: data}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(key, self.ttl)
        pipe.execute()


def follow(
    client: redis.Redis,
    run_id: str,
    ended: Callable[[], str | None],
    timeout: float | None = None,
    history: Callable[[], list[dict[str, Any]]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the run's events until it ends (its ``end`` event, last) or ``timeout`` passes.
    ``history()`` -> the run's step events so far (its trace): those the stream does not hold
    (they came before anybody followed) are yielded first, then the stream's, in order.
    ``ended()`` -> the run's final status, or None while it runs: a run that ended before it
    was followed gives its ``end`` at once."""
    pipe = client.pipeline(transaction=False)
    mark(pipe, run_id)
    pipe.execute()
    marked = time.monotonic()
    held = cast(list[Any], client.xrange(events_key(run_id), "-", "+"))  # kept since marked
    kept = [(entry_id, json.loads(fields[EVENT_FIELD])) for entry_id, fields in held]
    seen = {_identity(e) for _, e in kept if e.get("event") == "step"}
    for event in history() if history is not None else ():
        if _identity(event) not in seen:  # before the run was followed
            seen.add(_identity(event))
            yield event
    for _, event in kept:
        yield event
        if event.get("event") == "end":
            return
    last = kept[-1][0] if kept else "0"
    end = None if timeout is None else time.monotonic() + timeout
    while end is None or time.monotonic() < end:
        if time.monotonic() - marked > LISTEN_S / 3:
            pipe = client.pipeline(transaction=False)
            mark(pipe, run_id)
            pipe.execute()
            marked = time.monotonic()
        wait_ms = 1000 if end is None else max(1, min(1000, int((end - time.monotonic()) * 1000)))
        found = client.xread({events_key(run_id): last}, block=wait_ms, count=500)
        entries = cast(list[Any], found)[0][1] if found else []
        if not entries:
            status = ended()  # it ended before it was followed (or its end was trimmed)
            if status is not None:
                yield {"event": "end", "status": status, "at": time.time()}
                return
            continue
        for entry_id, fields in entries:
            last = entry_id
            event = json.loads(fields[EVENT_FIELD])
            if event.get("event") == "step" and _identity(event) in seen:
                continue  # in the history already
            yield event
            if event.get("event") == "end":
                return


def _identity(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event.get("node"), event.get("status"), event.get("started_at"), event.get("attempt"))
