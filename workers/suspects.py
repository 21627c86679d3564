"""Lost, or just moving: what the orphan checks (steps, canvas runs) call lost is what they
found nowhere twice in a row, a grace period apart -- a message seen once in no queue may be
on its way from one place to another."""

from __future__ import annotations

import redis

from fleet.constants import ORPHAN_SUSPECTS_KEY


def lost(client: redis.Redis, key: str, found: bool, now: float, grace_s: float) -> bool:
    """Whether ``key`` (``run|path``, ``run|canvas``) is lost: not ``found`` now, and not
    found at a look at least ``grace_s`` ago either. Found clears its suspicion; lost clears
    it too (the caller acts on it once)."""
    if found:
        client.hdel(ORPHAN_SUSPECTS_KEY, key)
        return False
    first = client.hget(ORPHAN_SUSPECTS_KEY, key)
    if first is None:
        client.hset(ORPHAN_SUSPECTS_KEY, key, repr(now))
        return False
    if now - float(str(first)) < grace_s:
        return False
    client.hdel(ORPHAN_SUSPECTS_KEY, key)
    return True
