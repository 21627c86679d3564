"""Online statistics: moving averages of observed run times, shared through one Redis hash.

Fields: ``<op>|<cls>|s`` (seconds per step), ``<op>|<cls>|ratio`` (observed over the
profile's prediction) and ``*|<cls>|s`` (any op on the class). Each observation moves an
average by ``ALPHA`` of the way to it.

A process adds its observations up and sends them at most every ``SEND_EVERY_S`` (the first
after a quiet spell at once): a step's record carries them, one small script for all, where
there was one per step -- at hundreds of steps a second, most of a step's Redis work that
was not its own. What reaches Redis is exactly what the observations one by one would have
made: ``n`` of them move an average ``old`` to ``decay * old + added`` (``decay`` =
``(1 - ALPHA) ** n``), or to their own average where there was none. What a process
observed in its last ``SEND_EVERY_S`` before a pause waits for its next step.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from fleet.constants import ONLINE_PROFILE_KEY as ONLINE_KEY
from fleet.store.lua import Lua

ALPHA = 0.2  # weight of the newest observation in the moving averages
SEND_EVERY_S = 0.1  # a process sends what it observed at most this often
RATIO_RANGE = (0.05, 20.0)  # an observed/predicted ratio is clipped to this

# For each field, ARGV holds (field, decay, added, alone): new = decay * old + added, or alone
# where the field has no value yet.
_OBSERVE = Lua(
    """
for i = 1, #ARGV, 4 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  local new = tonumber(ARGV[i + 3])
  if old then new = tonumber(ARGV[i + 1]) * old + tonumber(ARGV[i + 2]) end
  redis.call('HSET', KEYS[1], ARGV[i], tostring(new))
end
return 1
"""
)


@dataclass(slots=True)
class Pending:
    """Observations of one field not sent yet, as one move of its average."""

    decay: float = 1.0  # what is left of the old average: (1 - ALPHA) ** n
    added: float = 0.0  # what the observations add to it
    alone: float | None = None  # their own average (for a field with none yet)

    def add(self, value: float) -> None:
        keep = 1 - ALPHA
        self.decay *= keep
        self.added = keep * self.added + ALPHA * value
        self.alone = value if self.alone is None else keep * self.alone + ALPHA * value

    def args(self) -> list[float]:
        return [self.decay, self.added, self.alone if self.alone is not None else self.added]


class OnlineStats:
    """This process's observations not sent yet, and their sending (see the module). Safe
    for the steps of a thread pool: one lock around what they share."""

    def __init__(self, every_s: float = SEND_EVERY_S) -> None:
        self.every_s = every_s
        self.pending: dict[str, Pending] = {}
        self.sent_at = float("-inf")
        self.pid = os.getpid()
        self._lock = threading.Lock()

    def add(self, op: str, cls: str, seconds: float, predicted: float | None) -> None:
        """One step of ``op`` on ``cls`` took ``seconds`` (``predicted``: the profile's)."""
        with self._lock:
            if os.getpid() != self.pid:  # a forked child: what its parent held is not its own
                self.pending = {}
                self.pid, self.sent_at = os.getpid(), float("-inf")
            self._field(f"{op}|{cls}|s").add(seconds)
            self._field(f"*|{cls}|s").add(seconds)
            if predicted and predicted > 0:
                low, high = RATIO_RANGE
                self._field(f"{op}|{cls}|ratio").add(min(max(seconds / predicted, low), high))

    def queue(self, pipe: Any, now: float | None = None) -> bool:
        """Add to ``pipe`` (a step's record) what was observed, if it is time to send it:
        whether it did."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self.pending or now - self.sent_at < self.every_s:
                return False
            sending, self.pending = self.pending, {}
            self.sent_at = now
        args: list[Any] = []
        for name, pending in sending.items():
            args += [name, *pending.args()]
        _OBSERVE.queue(pipe, [ONLINE_KEY], args)
        return True

    def _field(self, name: str) -> Pending:  # (with the lock held)
        found = self.pending.get(name)
        if found is None:
            found = self.pending[name] = Pending()
        return found


_stats = OnlineStats()


def observed(pipe: Any, op: str, cls: str, seconds: float, predicted: float | None) -> None:
    """This process observed a step (``observe`` in a step's record): sent with ``pipe``
    when it is time."""
    _stats.add(op, cls, seconds, predicted)
    _stats.queue(pipe)
