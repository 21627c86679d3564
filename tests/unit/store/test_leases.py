"""Start leases on a real Redis: which copy of a step runs, and when a holder counts as dead.

The truth each test checks against is the rule in fleet/store/leases.py, case by case: one
holder at a time; a live lease turns copies away; a lapsed one is taken over and counted; a
death counted elsewhere ("lost") is not counted twice; a retried attempt ("done") does not
run again; recorded outputs and a failed run win over any lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from fleet.constants import RUN_KEY, RUN_LEASES_KEY, RUN_OUTPUTS_KEY, RUN_STARTS_KEY
from fleet.store.leases import Leases, lease_field
from workers.lease_keeper import Keeper

TTL = 60


@pytest.fixture
def run_id(client: redis.Redis) -> Iterator[str]:
    rid = f"lease-test-{uuid.uuid4().hex[:8]}"
    client.hset(RUN_KEY.format(id=rid), "status", "running")
    yield rid
    for key in (RUN_KEY, RUN_LEASES_KEY, RUN_OUTPUTS_KEY, RUN_STARTS_KEY):
        client.delete(key.format(id=rid))


def test_the_first_copy_runs_and_a_copy_beside_it_is_held(client: redis.Redis, run_id: str) -> None:
    leases = Leases(client, TTL, lease_s=5.0)
    first = leases.begin(run_id, "a", 0, "w1/1/x", group=False)
    assert (first.verdict, first.takeovers, first.status) == ("run", 0, "running")
    second = leases.begin(run_id, "a", 0, "w2/1/y", group=False)
    assert second.verdict == "held"
    assert 4.0 < second.wait_s <= 5.0  # until the holder's lease would lapse
    # another attempt, or another step, is a lease of its own
    assert leases.begin(run_id, "a", 1, "w2/1/y", group=False).verdict == "run"
    assert leases.begin(run_id, "b", 0, "w2/1/y", group=False).verdict == "run"


def test_a_begin_tried_again_after_its_reply_was_lost_runs(
    client: redis.Redis, run_id: str
) -> None:
    """A broker restart can take the reply of the round trip that took the lease; redis-py
    sends it again, with the same token. That copy used to find its own lease, take itself
    for another copy and leave: every later copy then waited on a live holder (itself)
    that renewed nothing, for good (seen in tests/integration/test_broker_restart.py)."""
    leases = Leases(client, TTL, lease_s=5.0)
    assert leases.begin(run_id, "a", 0, "w1/1/x", group=False).verdict == "run"
    again = leases.begin(run_id, "a", 0, "w1/1/x", group=False)  # the same call, again
    assert (again.verdict, again.takeovers) == ("run", 0)
    assert leases.begin(run_id, "a", 0, "w2/1/y", group=False).verdict == "held"


def test_copies_that_arrive_together_run_the_step_once(client: redis.Redis, run_id: str) -> None:
    """RabbitMQ delivered two and three copies of one step in the same millisecond after a
    restart (a publish repeated for a lost confirm); each used to count as a start."""
    leases = Leases(client, TTL, lease_s=5.0)
    with ThreadPoolExecutor(8) as pool:
        found = list(
            pool.map(lambda i: leases.begin(run_id, "c", 0, f"w/{i}/t", group=False), range(8))
        )
    assert sorted(f.verdict for f in found) == ["held"] * 7 + ["run"]
    assert all(f.takeovers == 0 for f in found)


def test_a_lapsed_lease_is_taken_over_and_counted(client: redis.Redis, run_id: str) -> None:
    leases = Leases(client, TTL, lease_s=1.0)
    assert leases.begin(run_id, "a", 0, "dead/1/x", group=False).verdict == "run"
    time.sleep(1.1)  # its holder never renewed it: it died
    taken = leases.begin(run_id, "a", 0, "w2/1/y", group=False)
    assert (taken.verdict, taken.takeovers) == ("run", 1)
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), lease_field("a", 0)).startswith("w2/1/y|")
    time.sleep(1.1)
    assert leases.begin(run_id, "a", 0, "w3/1/z", group=False).takeovers == 2


def test_renewing_keeps_a_live_holder_and_reports_a_lost_one(
    client: redis.Redis, run_id: str
) -> None:
    leases = Leases(client, TTL, lease_s=1.0)
    leases.begin(run_id, "a", 0, "w1/1/x", group=False)
    for _ in range(3):  # 1.5 s in all, past the lease, renewed each half second
        time.sleep(0.5)
        assert leases.renew([(run_id, "a@0", "w1/1/x")]) == []
    assert leases.begin(run_id, "a", 0, "w2/1/y", group=False).verdict == "held"
    time.sleep(1.1)
    assert leases.begin(run_id, "a", 0, "w2/1/y", group=False).verdict == "run"  # taken over
    lost = leases.renew([(run_id, "a@0", "w1/1/x"), (run_id, "b@0", "w1/1/q")])
    assert lost == [(run_id, "a@0", "w1/1/x")]  # b: gone (its run expired): written again
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "b@0").startswith("w1/1/q|")


def test_a_death_counted_by_the_main_process_is_not_counted_again(
    client: redis.Redis, run_id: str
) -> None:
    leases = Leases(client, TTL, lease_s=30.0)
    leases.begin(run_id, "a", 0, "child/1/x", group=False)
    leases.mark(run_id, "a@0", "lost")  # its pool child died; the main process counted it
    again = leases.begin(run_id, "a", 0, "child/2/y", group=False)
    assert (again.verdict, again.takeovers) == ("run", 0)  # at once, not after 30 s


def test_a_retried_attempt_does_not_run_again(client: redis.Redis, run_id: str) -> None:
    leases = Leases(client, TTL, lease_s=30.0)
    leases.begin(run_id, "a", 0, "w1/1/x", group=False)
    leases.mark(run_id, "a@0", "done")
    leases.mark(run_id, "a@0", "lost")  # a late loss does not undo the end
    assert leases.begin(run_id, "a", 0, "w2/1/y", group=False).verdict == "ended"


def test_recorded_outputs_and_a_failed_run_win_over_the_lease(
    client: redis.Redis, run_id: str
) -> None:
    leases = Leases(client, TTL, lease_s=30.0)
    client.hset(RUN_OUTPUTS_KEY.format(id=run_id), "a", "{}")
    found = leases.begin(run_id, "a", 0, "w1/1/x", group=False)
    assert (found.verdict, found.ran) == ("skip", True)
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0") is None  # no lease taken
    # an item of a map runs again even when recorded (it must join the node's set)
    assert leases.begin(run_id, "a", 0, "w1/1/x", group=True).verdict == "run"
    client.hset(RUN_KEY.format(id=run_id), "status", "failed")
    assert leases.begin(run_id, "b", 0, "w1/1/x", group=False).verdict == "skip"


def test_the_keeper_renews_what_its_process_holds_until_released(
    client: redis.Redis, run_id: str
) -> None:
    leases = Leases(client, TTL, lease_s=1.0)
    keeper = Keeper()
    token = keeper.token("host|1")
    assert "|" not in token and token.startswith("host_1/")
    assert leases.begin(run_id, "a", 0, token, group=False).verdict == "run"
    keeper.hold(leases, run_id, "a@0", token)  # its thread renews every third of a second
    time.sleep(2.0)
    assert leases.begin(run_id, "a", 0, "other/1/y", group=False).verdict == "held"
    keeper.release(run_id, "a@0")
    assert keeper.held() == []
    time.sleep(1.2)
    assert leases.begin(run_id, "a", 0, "other/1/y", group=False).takeovers == 1


def test_the_keeper_lets_go_of_a_lease_another_copy_took_over(
    client: redis.Redis, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    leases = Leases(client, TTL, lease_s=30.0)
    keeper = Keeper()
    mine, theirs = keeper.token("w1"), keeper.token("w2")
    leases.begin(run_id, "a", 0, mine, group=False)
    keeper.hold(leases, run_id, "a@0", mine)
    keeper.hold(leases, run_id, "b@0", keeper.token("w1"))  # not written yet: renewed
    client.hset(RUN_LEASES_KEY.format(id=run_id), "a@0", f"{theirs}|9999999999.000")
    with caplog.at_level("WARNING", logger="fleet.leases"):
        keeper.renew_once()
    assert [field for _, field, _ in keeper.held()] == ["b@0"]
    assert f"another copy took over its start lease from {mine}" in caplog.text
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "a@0").startswith(theirs)
    keeper.release(run_id, "b@0")


def test_a_holder_that_stalled_and_came_back_is_not_counted_as_dead(
    client: redis.Redis, run_id: str
) -> None:
    """Two pauses of live workers (SIGSTOP), one after the other, failed a healthy run as
    "its worker died 2 times": each lapse was counted as a death. A holder that renews after
    a takeover was alive, and its takeover is taken back; one that never comes back stays
    counted (test_a_lapsed_lease_is_taken_over_and_counted)."""
    leases = Leases(client, TTL, lease_s=0.5)
    assert leases.begin(run_id, "s", 0, "a/1/x", group=False).verdict == "run"
    time.sleep(0.6)  # a stalls past its lease
    assert leases.begin(run_id, "s", 0, "b/1/y", group=False).takeovers == 1
    assert leases.renew([(run_id, "s@0", "a/1/x")]) == [(run_id, "s@0", "a/1/x")]  # a is back
    assert client.hget(RUN_STARTS_KEY.format(id=run_id), "s@0") == "0"
    time.sleep(0.6)  # now b stalls
    third = leases.begin(run_id, "s", 0, "c/1/z", group=False)
    assert (third.verdict, third.takeovers) == ("run", 1)  # not 2: max_worker_losses


def test_a_stalled_holder_that_ends_before_renewing_is_not_counted_as_dead(
    client: redis.Redis, run_id: str
) -> None:
    """A holder that comes back and ends before its next renewal asks once, at release,
    whether its lease was taken over; a holder renewed in time asks nothing."""
    keeper = Keeper()
    slow = Leases(client, TTL, lease_s=30.0)  # the keeper's thread renews every 10 s
    keeper.hold(slow, run_id, "other@0", keeper.token("w1"))
    leases = Leases(client, TTL, lease_s=0.3)
    mine = keeper.token("w1")
    leases.begin(run_id, "s", 0, mine, group=False)
    keeper.hold(leases, run_id, "s@0", mine)
    time.sleep(0.4)  # unrenewed past its lease: this process stalled
    assert leases.begin(run_id, "s", 0, "w2/1/y", group=False).takeovers == 1
    keeper.release(run_id, "s@0")  # it came back and ended
    assert client.hget(RUN_STARTS_KEY.format(id=run_id), "s@0") == "0"
    keeper.release(run_id, "other@0")
