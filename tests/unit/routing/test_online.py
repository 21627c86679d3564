"""A process's observations reach the shared moving averages at most every SEND_EVERY_S, as
one script, and leave them exactly as the observations sent one by one would have (on a
real Redis)."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fleet.constants import ONLINE_PROFILE_KEY
from fleet.routing.online import ALPHA, OnlineStats


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/12", decode_responses=True)
    found.delete(ONLINE_PROFILE_KEY)
    yield found
    found.delete(ONLINE_PROFILE_KEY)


def _moved(old: float | None, values: list[float]) -> float:
    """The average after ``values`` one by one."""
    for value in values:
        old = value if old is None else ALPHA * value + (1 - ALPHA) * old
    assert old is not None
    return old


def _send(stats: OnlineStats, client: redis.Redis, now: float) -> bool:
    pipe = client.pipeline(transaction=False)
    sent = stats.queue(pipe, now)
    pipe.execute()
    return sent


def test_observations_sent_together_move_the_averages_as_one_by_one(
    client: redis.Redis,
) -> None:
    client.hset(ONLINE_PROFILE_KEY, mapping={"*|cpu|s": 0.5})  # another process's average
    stats = OnlineStats(every_s=0.1)
    seconds = [0.010, 0.030, 0.020, 0.050, 0.015]
    predicted = 0.02
    stats.add("text.upper", "cpu", seconds[0], predicted)
    assert _send(stats, client, now=100.0)  # the first at once
    for value in seconds[1:]:
        stats.add("text.upper", "cpu", value, predicted)
        assert not _send(stats, client, now=100.05)  # within SEND_EVERY_S: held
    held = client.hgetall(ONLINE_PROFILE_KEY)
    assert math.isclose(float(held["text.upper|cpu|s"]), seconds[0])
    assert _send(stats, client, now=100.2)  # then all four in one script
    assert not stats.pending
    found = {k: float(v) for k, v in client.hgetall(ONLINE_PROFILE_KEY).items()}
    assert found.keys() == {"text.upper|cpu|s", "text.upper|cpu|ratio", "*|cpu|s"}
    assert math.isclose(found["text.upper|cpu|s"], _moved(None, seconds))
    assert math.isclose(found["*|cpu|s"], _moved(0.5, seconds))
    ratios = [s / predicted for s in seconds]
    assert math.isclose(found["text.upper|cpu|ratio"], _moved(None, ratios))


def test_nothing_observed_sends_nothing(client: redis.Redis) -> None:
    stats = OnlineStats()
    assert not _send(stats, client, now=5.0)
    stats.add("text.upper", "cpu", 0.01, None)  # no prediction: no ratio
    assert _send(stats, client, now=6.0)
    assert set(client.hgetall(ONLINE_PROFILE_KEY)) == {"text.upper|cpu|s", "*|cpu|s"}


def test_a_first_send_of_many_is_their_own_average(client: redis.Redis) -> None:
    stats = OnlineStats(every_s=0.1)
    seconds = [0.2, 0.1, 0.4]
    for value in seconds:  # none sent yet: all go together, to fields that have no average
        stats.add("text.upper", "cpu", value, None)
    assert _send(stats, client, now=50.0)
    found = float(client.hget(ONLINE_PROFILE_KEY, "text.upper|cpu|s") or 0)
    assert math.isclose(found, _moved(None, seconds))  # not their mean (0.233), not the last


class _Recorded:
    """A pipeline that keeps what a send queued (the in-process part alone)."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> None:
        self.sent.append(list(args[numkeys:]))


def test_a_thread_pools_steps_lose_no_observation() -> None:
    stats = OnlineStats(every_s=0.0)  # every step sends: the most contention there can be
    pipe, errors = _Recorded(), []
    per_thread, threads = 2000, 8

    def steps(k: int) -> None:
        try:
            for i in range(per_thread):
                stats.add(f"op{(k + i) % 5}", "io", 0.01, None)
                stats.queue(pipe)
        except Exception as exc:  # (reported below)
            errors.append(exc)

    workers = [threading.Thread(target=steps, args=(k,)) for k in range(threads)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads taking turns between any two bytecodes, nearly
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    stats.queue(pipe, now=float("inf"))
    assert not errors
    # each send moves a field by decay = (1 - ALPHA) ** n: the n's add up to every step
    counted = 0.0
    for args in pipe.sent:
        for at in range(0, len(args), 4):
            if args[at] == "*|io|s":
                counted += math.log(args[at + 1]) / math.log(1 - ALPHA)
    assert round(counted) == per_thread * threads
