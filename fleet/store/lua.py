"""The Lua scripts the stores run in Redis, sent by their digest.

``EVAL`` sends a script's text with every call, and Redis hashes that text on every call to
find the script it compiled: about 9 us of Redis's one thread for a 2 KB script, three
times in a one-step run (its submission, its step's record, its end). Each script of the
stores is a :class:`Lua`, sent as ``EVALSHA`` with its digest. Every connection a store opens
loads every script first (:func:`load_on_connect`, redis-py's connect hook: one round trip
per connection), so the scripts are there from Redis's start on -- a restart drops every
connection. A script Redis lost while a connection stayed open (``SCRIPT FLUSH``, a proxy
that reconnected behind the client) is loaded and run again: by :meth:`Lua.run`, and by
the stores' pipelines (:class:`fleet.store.connection.Pipeline`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

Arg = str | int | float | bytes
KNOWN: dict[str, Lua] = {}  # every script by digest: what a connection loads as it connects


class Lua:
    """One script of the stores (its text, and its digest as ``EVALSHA`` names it)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        KNOWN[self.sha] = self

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Arg]) -> None:
        """Queue a call on ``pipe`` (a store's pipeline: one that loads a lost script)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Call the script now; loaded first if Redis lost it."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            load(client)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def load(client: redis.Redis) -> None:
    """Load every known script (in one round trip)."""
    pipe = client.pipeline(transaction=False)
    for script in list(KNOWN.values()):
        pipe.script_load(script.text)
    pipe.execute()


def load_on_connect(conn: Any) -> None:
    """redis-py's connect hook (``redis_connect_func``): the connection's own set-up, then
    every known script loaded, in one round trip."""
    conn.on_connect()
    scripts = list(KNOWN.values())
    conn.send_packed_command(conn.pack_commands([("SCRIPT", "LOAD", s.text) for s in scripts]))
    for _ in scripts:
        conn.read_response()
