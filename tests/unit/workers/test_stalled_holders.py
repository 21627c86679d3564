"""A stalled holder is not a dead one (issue 41, finding 8): start leases on a real Redis,
with holders that are real processes -- paused (SIGSTOP) and killed on purpose -- and leases
short enough to lapse in the test.

What was seen: an op that held the GIL for 30 s ran twice (a copy took its lapsed lease
over and ran beside it), and two pauses of live workers failed a healthy run as "its worker
died 2 times". The rule checked here (workers/holders.py): a lapsed lease's holder known
alive -- its process still there on this machine, or among the processes its worker still
announces -- stalled: no copy runs beside it and nothing is counted; a holder known dead,
or one that cannot be told from a dead one (its whole worker silent on another machine), is
taken over and counted, as before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from fleet.constants import (
    RUN_KEY,
    RUN_LEASES_KEY,
    RUN_OUTPUTS_KEY,
    RUN_STARTS_KEY,
    WORKER_INFO_KEY,
)
from fleet.messaging.app import app
from fleet.store.leases import Leases
from workers import holders
from workers.holders import Holders
from workers.lease_keeper import Keeper
from workers.runtime import WorkerRuntime

TTL = 60
LEASE = 0.3
pytestmark = pytest.mark.skipif(not holders.MACHINE, reason="needs /proc to find processes")


@pytest.fixture
def run_id(client: redis.Redis) -> Iterator[str]:
    rid = f"stall-test-{uuid.uuid4().hex[:8]}"
    client.hset(RUN_KEY.format(id=rid), "status", "running")
    yield rid
    for key in (RUN_KEY, RUN_LEASES_KEY, RUN_OUTPUTS_KEY, RUN_STARTS_KEY):
        client.delete(key.format(id=rid))


@pytest.fixture
def paused() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started here and paused (SIGSTOP): stalled holders. Killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def pause_one(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "120"])
    os.kill(proc.pid, signal.SIGSTOP)
    procs.append(proc)
    return proc


def holder_of(pid: int, worker: str = "io1@host") -> str:
    """The token a step's holder in process ``pid`` gives (Keeper.token's format)."""
    return f"{worker}/{holders.process(pid)}/{uuid.uuid4().hex[:12]}"


def starts(client: redis.Redis, run_id: str) -> int:
    return int(client.hget(RUN_STARTS_KEY.format(id=run_id), "s@0") or 0)


def test_no_copy_runs_beside_a_paused_holder_until_it_really_dies(
    client: redis.Redis, run_id: str, paused: list[subprocess.Popen[bytes]]
) -> None:
    """Finding 8 (a): the holder is paused past its lease; copies arriving meanwhile are
    held, uncounted, for as long as its process is there. Killed, it is taken over and
    counted (a poison step still fails its run at max_worker_losses)."""
    leases = Leases(client, TTL, LEASE, Holders(client, worker_ttl=10.0))
    proc = pause_one(paused)
    holder = holder_of(proc.pid)
    assert leases.begin(run_id, "s", 0, holder, group=False).verdict == "run"
    time.sleep(LEASE + 0.1)  # the holder never renews: paused
    for _ in range(3):
        copy = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
        assert (copy.verdict, copy.takeovers, copy.stalled) == ("held", 0, holder)
        assert copy.wait_s == pytest.approx(LEASE / 2)  # asked again then
        time.sleep(0.1)
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "s@0").startswith(holder + "|")
    assert starts(client, run_id) == 0
    proc.kill()
    proc.wait()  # reaped: gone (a zombie would count as dead too)
    taken = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
    assert (taken.verdict, taken.takeovers) == ("run", 1)


def test_two_holders_paused_at_once_do_not_fail_the_run(
    client: redis.Redis, run_id: str, paused: list[subprocess.Popen[bytes]]
) -> None:
    """Finding 8 (b): 'worker died 2 times' with no worker dead. The first holder dies for
    real (counted: 1); its successor is paused, and so is every copy's worker after it --
    none of them takes the lease from a live holder, so the count stays at the one death
    and the run is not failed at max_worker_losses (2)."""
    judge = Holders(client, worker_ttl=10.0)
    leases = Leases(client, TTL, LEASE, judge)
    dead = pause_one(paused)
    leases.begin(run_id, "s", 0, holder_of(dead.pid), group=False)
    dead.kill()
    dead.wait()
    time.sleep(LEASE + 0.1)
    second = holder_of(pause_one(paused).pid, "io2@host")
    assert leases.begin(run_id, "s", 0, second, group=False).takeovers == 1  # a real death
    time.sleep(LEASE + 0.1)  # the second holder is paused past its lease
    third = holder_of(pause_one(paused).pid, "io3@host")  # its worker is paused too
    found = leases.begin(run_id, "s", 0, third, group=False)
    assert (found.verdict, found.takeovers, found.stalled) == ("held", 0, second)
    assert starts(client, run_id) == 1  # old code: 2, and the run failed
    os.kill(paused[1].pid, signal.SIGCONT)  # the second holder comes back: its lease is kept
    assert leases.renew([(run_id, "s@0", second)]) == []
    assert client.hget(RUN_KEY.format(id=run_id), "status") == "running"


def test_a_holder_on_another_machine_is_judged_by_its_workers_heartbeat(
    client: redis.Redis, run_id: str
) -> None:
    """A holder on another host is alive while its worker beats with the holder's process
    among its own (a prefork child paused while its main process beats); a worker that beats
    without it lost it (dead); a worker that stopped beating cannot be told from a dead one
    -- taken for dead, as the copy of a worker that never comes back must run."""
    judge = Holders(client, worker_ttl=10.0)
    leases = Leases(client, TTL, LEASE, judge)
    worker = f"gpu-{uuid.uuid4().hex[:6]}@elsewhere"
    holder = f"{worker}/0123-boot:4026531836/4242.99/abc"  # not this machine
    try:
        for beat, pids, verdict, counted in (
            (time.time(), [4100, 4242], "held", 0),  # beats, the holder among its pids
            (time.time(), [4100, 4243], "run", 1),  # beats without it: the holder died
            (time.time() - 60, [4100, 4242], "run", 2),  # silent: cannot be told, counted
        ):
            info = {"pid": 4100, "pids": pids, "last_seen": beat}
            client.hset(WORKER_INFO_KEY, worker, json.dumps(info))
            client.hset(RUN_LEASES_KEY.format(id=run_id), "s@0", f"{holder}|1.000")  # lapsed
            found = leases.begin(run_id, "s", 0, f"io1@here/x/1.1/{counted}", group=False)
            assert (found.verdict, starts(client, run_id)) == (verdict, counted)
        client.hdel(WORKER_INFO_KEY, worker)
        assert judge(holder) is None  # never announced, or gone: cannot be told
        assert judge("w1/1/x") is None  # an older worker's token says nothing of its process
    finally:
        client.hdel(WORKER_INFO_KEY, worker)


def test_a_holder_token_names_its_process_and_outlives_no_reuse_of_its_pid(
    client: redis.Redis, paused: list[subprocess.Popen[bytes]]
) -> None:
    judge = Holders(client, worker_ttl=10.0)
    token = Keeper().token("io1@host/x|y")
    worker, machine, proc, _ = token.split("/")
    assert (worker, machine, proc.partition(".")[0]) == (
        "io1@host_x_y",
        holders.MACHINE,
        str(os.getpid()),
    )
    assert judge(token) is True  # this process: alive
    stopped = pause_one(paused)
    assert judge(holder_of(stopped.pid)) is True  # paused is alive
    pid, _, start = proc.partition(".")
    reused = f"io1@host/{holders.MACHINE}/{pid}.{int(start) + 1}/abc"
    assert judge(reused) is False  # same pid, another process: the holder is gone
    stopped.kill()
    stopped.wait()
    assert judge(holder_of(stopped.pid)) is False


def test_a_worker_runtime_judges_the_holders_of_lapsed_leases() -> None:
    """The worker's own leases ask the judge (without one, every lapse counted as a death)."""
    rt = WorkerRuntime(app)
    assert isinstance(rt.leases.judge, Holders)
    assert rt.leases.judge.worker_ttl == rt.cfg.worker_ttl


def test_a_holder_that_ends_by_an_error_lets_the_step_go(client: redis.Redis, run_id: str) -> None:
    """Its process lives on, so a later copy would find the holder alive and wait on a step
    nobody runs: a step that ends by an error marks its lease lost (the copy runs at once,
    uncounted) -- but not a lease another copy took over from it meanwhile."""
    leases = Leases(client, TTL, LEASE, Holders(client, worker_ttl=10.0))
    keeper = Keeper()
    mine = keeper.token("io1@host")
    leases.begin(run_id, "s", 0, mine, group=False)
    keeper.hold(leases, run_id, "s@0", mine)
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("the record failed")
        finally:
            keeper.release(run_id, "s@0")
    copy = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
    assert (copy.verdict, copy.takeovers) == ("run", 0)  # at once, not held behind a live pid
    theirs = holder_of(os.getpid(), "io3@host")
    client.hset(RUN_LEASES_KEY.format(id=run_id), "t@0", f"{theirs}|9999999999.000")
    leases.mark(run_id, "t@0", "lost", mine)  # taken over from it while it stalled
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "t@0").startswith(theirs + "|")
    leases.mark(run_id, "t@0", "lost", theirs)  # its own holder lets it go
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "t@0") == "lost"


def test_a_lease_redis_refused_to_let_go_is_let_go_when_redis_answers(
    client: redis.Redis, run_id: str, redis_url: str
) -> None:
    """Seen in the io-waits bench (a thousand threads, redis-py's pool of 100): a step's
    bookkeeping failed with "Too many connections", and so did the mark that lets its lease
    go. The run then hung for good: every later copy found the lapsed lease's holder alive
    and waited on it. The keeper now marks it from its renewing thread once Redis answers."""
    tight = redis.Redis.from_url(redis_url, decode_responses=True, max_connections=1)
    leases = Leases(tight, TTL, LEASE, Holders(client, worker_ttl=10.0))
    keeper = Keeper()
    mine = keeper.token("io1@host")
    leases.begin(run_id, "s", 0, mine, group=False)
    keeper.hold(leases, run_id, "s@0", mine)
    busy = tight.connection_pool.get_connection()  # the pool's one connection, in use
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("the record failed")
        finally:
            keeper.release(run_id, "s@0")  # its mark is refused: Too many connections
    assert client.hget(RUN_LEASES_KEY.format(id=run_id), "s@0").startswith(mine + "|")
    tight.connection_pool.release(busy)
    deadline = time.monotonic() + 5
    while client.hget(RUN_LEASES_KEY.format(id=run_id), "s@0") != "lost":
        assert time.monotonic() < deadline, "the refused mark was never made again"
        time.sleep(0.05)
    copy = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
    assert (copy.verdict, copy.takeovers) == ("run", 0)


def test_a_lease_taken_on_receipt_is_held_only_while_its_worker_holds_the_step(
    client: redis.Redis, run_id: str, paused: list[subprocess.Popen[bytes]]
) -> None:
    """A worker's main process takes a step's lease as it receives the message
    (workers/receipt.py), for the pool process that will run it. That main process lives on
    when the message is dropped unstarted -- a lost connection flushes what the pool had not
    started -- so its being alive says nothing (review: every later copy was held, for
    good). Its worker's heartbeat does: it lists the leases of the requests it holds
    (received, waiting or running). Listed, the holder is alive and copies are held; not
    listed, a copy takes the lease over, uncounted -- nobody died -- even while the worker
    holds another copy of the same step, sent again for later (second review: judged by the
    step, that copy kept it "alive"). A dead holder (a one-process pool killed by its step)
    is still counted, and a live one that stopped beating (the whole worker stalled) holds."""
    leases = Leases(client, TTL, LEASE, Holders(client, worker_ttl=10.0))
    worker = f"cpu-{uuid.uuid4().hex[:6]}@here"
    mine = holders.token(worker, received=True)  # this process: alive
    unique = mine.rpartition("/")[2]
    assert unique.startswith(holders.RECEIVED)

    def beat(received: list[str], steps: list[list[str]]) -> None:
        info = {"pid": os.getpid(), "pids": [os.getpid()], "last_seen": time.time()}
        info |= {"received": received, "steps": steps}
        client.hset(WORKER_INFO_KEY, worker, json.dumps(info))

    def lapse(holder: str) -> None:
        client.hset(RUN_LEASES_KEY.format(id=run_id), "s@0", f"{holder}|1.000")

    try:
        beat(["r0123", unique], [[run_id, "s"]])  # it holds the request it took it for
        lapse(mine)
        copy = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
        assert (copy.verdict, copy.stalled) == ("held", mine)
        client.hdel(WORKER_INFO_KEY, worker)  # alive, not beating: the whole worker stalled
        assert leases.begin(run_id, "s", 0, holder_of(os.getpid()), group=False).verdict == "held"
        # it beats without that request, holding a copy of the step sent again for later
        beat(["r0123"], [[run_id, "s"]])
        taken = leases.begin(run_id, "s", 0, holder_of(os.getpid(), "io2@host"), group=False)
        assert (taken.verdict, taken.takeovers, starts(client, run_id)) == ("run", 0, 0)
        # on another machine: judged by the heartbeat alone, the same way
        remote = f"{worker}/0123-boot:4026531836/{os.getpid()}.99/r0123"
        judge = Holders(client, worker_ttl=10.0)
        assert judge(remote, (run_id, "s")) is True
        assert (
            judge(f"{worker}/0123-boot:4026531836/{os.getpid()}.99/r0456", (run_id, "s")) == "idle"
        )
        # a received holder that died is counted, as any dead holder
        dead = pause_one(paused)
        gone = f"{worker}/{holders.process(dead.pid)}/r0def"
        dead.kill()
        dead.wait()
        lapse(gone)
        counted = leases.begin(run_id, "s", 0, holder_of(os.getpid()), group=False)
        assert (counted.verdict, counted.takeovers) == ("run", 1)
    finally:
        client.hdel(WORKER_INFO_KEY, worker)
