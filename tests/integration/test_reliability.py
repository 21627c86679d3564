"""A worker process killed in the middle of a step loses nothing: the step is redelivered
(acks_late + task_reject_on_worker_lost) and the workflow completes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.constants import RUN_LEASES_KEY, STEP_TASK, WORKER_INFO_KEY
from fleet.deploy.local import LocalFleet, free_port
from fleet.errors import WorkflowFailed
from fleet.messaging.app import create_app
from fleet.routing.depth import PRIORITY_SEP, PRIORITY_STEPS

pytestmark = pytest.mark.integration


def _active_pid(client: Fleet, node: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = client.app.control.inspect(timeout=1.0).active() or {}
        for tasks in active.values():
            for task in tasks:
                if task.get("kwargs", {}).get("call", {}).get("path") == node:
                    return int(task["worker_pid"])
        time.sleep(0.1)
    raise AssertionError(f"step {node} never became active")


def test_killed_worker_process_does_not_lose_the_step(client: Fleet) -> None:
    wf = Workflow("survivor", inputs=["v"])
    slow = wf.step("slow", "test.sleep", seconds=2.0, value=wf.input("v"), classes=["cpu"])
    after = wf.step("after", "text.upper", text=slow["value"])
    wf.output("out", after["text"])
    run = client.submit(wf, {"v": "still here"})
    pid = _active_pid(client, "slow")
    os.kill(pid, signal.SIGKILL)  # the prefork child running the step dies
    assert run.get(timeout=60) == {"out": "STILL HERE"}
    steps = [e for e in run.trace() if e.node == "slow" and e.status == "succeeded"]
    assert len(steps) == 1  # it ran to completion once, after redelivery


def test_a_step_holds_the_lease_its_worker_took_as_it_received_it(client: Fleet) -> None:
    """The start lease is taken in the round trip the worker's main process makes as it
    receives the message (workers/receipt.py): the holder named in the lease is that main
    process, not the pool child running the op."""
    wf = Workflow("received", inputs=["v"])
    slow = wf.step("slow", "test.sleep", seconds=8.0, value=wf.input("v"), classes=["cpu"])
    wf.output("out", slow["value"])
    run = client.submit(wf, {"v": "held"})
    deadline, held = time.monotonic() + 20, ""
    while not held and time.monotonic() < deadline:
        held = client.store.redis.hget(RUN_LEASES_KEY.format(id=run.id), "slow@0") or ""
        time.sleep(0.05)
    holder = held.rpartition("|")[0]  # worker/machine/pid.start/unique
    # its worker's heartbeat lists the lease while it holds the step (workers.holders);
    # the step sleeps 8 s, past `inspect` round trips and heartbeats on a busy machine
    worker, unique = holder.split("/")[0], holder.rpartition("/")[2]
    listed = False
    while not listed and time.monotonic() < deadline:
        info = json.loads(client.store.redis.hget(WORKER_INFO_KEY, worker) or "{}")
        listed = unique in info.get("received", [])
        time.sleep(0.1)
    assert listed
    child = _active_pid(client, "slow")
    pid = int(holder.split("/")[-2].split(".")[0])
    parent = int(Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[1])
    assert pid != child and pid == parent
    assert run.get(timeout=30) == {"out": "held"}
    assert [(e.node, e.status) for e in run.trace()] == [("slow", "succeeded")]


STOP_WATCHING = "stop-watching-commands"


def _watch_commands(url: str, seen: list[tuple[str, str]]) -> None:
    """Every command Redis runs (MONITOR) as (client, command), until one echoes
    ``STOP_WATCHING``."""
    watcher = redis.Redis.from_url(url, decode_responses=True)
    with watcher.monitor() as monitor:
        while STOP_WATCHING not in (found := monitor.next_command())["command"]:
            seen.append((f"{found['client_address']}:{found['client_port']}", found["command"]))


def test_a_step_whose_record_is_its_last_work_acknowledges_its_message_there(
    client: Fleet,
) -> None:
    """A step whose record leaves it nothing more to do (here: the run's last, which ends
    the run there) acknowledges its message in that record's round trip, and its worker's
    main process does not acknowledge it again; a step whose successor is decided after
    its record (a join's branches) is acknowledged by its worker's main process, as
    before. On a prefork and a thread-pool worker, every message leaves kombu's unacked
    record exactly once."""
    wf = Workflow("acks", inputs=["x"])
    double = wf.step("double", "math.add", a=wf.input("x"), b=wf.input("x"), classes=["cpu"])
    plus = wf.step("plus", "math.add", a=wf.input("x"), b=1, classes=["io"])
    total = wf.step("total", "math.add", a=double["result"], b=plus["result"], classes=["io"])
    wf.output("out", total["result"])
    seen: list[tuple[str, str]] = []
    watching = threading.Thread(target=_watch_commands, args=(client.cfg.broker_url, seen))
    watching.start()
    try:
        time.sleep(0.5)
        runs = [client.submit(wf, {"x": i}) for i in range(3)]
        assert [r.get(timeout=60) for r in runs] == [{"out": 3 * i + 1} for i in range(3)]
        time.sleep(1.0)  # past the workers' main processes' last turn
    finally:
        client.store.redis.echo(STOP_WATCHING)
        watching.join(timeout=30)
    ids = [r.id for r in runs]  # (a message of an earlier test's run, given out again to a
    # worker in this window -- a step killed there -- is not one of these)
    steps = {
        c.split()[2]: c
        for _, c in seen
        if c.startswith("HSET unacked ") and any(run_id in c for run_id in ids)
    }
    taken = [
        c.split()[2] for _, c in seen if c.startswith("HSET unacked ") and c.split()[2] in steps
    ]
    removed = [
        c.split()[2] for _, c in seen if c.startswith("HDEL unacked ") and c.split()[2] in steps
    ]
    assert len(taken) == 9 and sorted(removed) == sorted(taken)  # each once
    by_client: dict[str, list[str]] = {}
    for who, command in seen:
        by_client.setdefault(who, []).append(command)
    in_record = set()  # the record's status read, then kombu's two removals
    for commands in by_client.values():
        for i, command in enumerate(commands):
            before = commands[max(0, i - 2) : i]
            if command.startswith("HDEL unacked ") and before[0].startswith("HGET fleet:run:"):
                in_record.add(command.split()[2])
    ours = in_record & set(steps)
    assert len(ours) == 3  # the runs' last steps
    assert all("acks:total [math.add]" in steps[tag] for tag in ours)  # (its shadow)


def test_a_step_killed_at_its_hard_time_limit_each_time_fails_its_run(client: Fleet) -> None:
    """A step that outlasts its soft limit (caught) is killed at the hard one (timeout + 5 s)
    by the pool; its worker's main process counts the kill as a loss of its worker and lets
    the lease go. Sent again by the orphan check, killed again: the run fails naming the
    node. (With the lease taken as the worker received the message, the kill had gone
    uncounted, and the step was sent again for good: review.)"""
    wf = Workflow("stubborn", inputs=["v"])
    slow = wf.step(
        "slow", "test.stubborn", seconds=60.0, value=wf.input("v"), classes=["cpu"], timeout=1.0
    )
    wf.output("out", slow["value"])
    run = client.submit(wf, {"v": 1})
    with pytest.raises(WorkflowFailed) as failed:
        run.get(timeout=90)
    assert failed.value.node == "slow"
    assert "killed at its hard time limit (6 s)" in str(failed.value)


def test_a_poison_step_fails_its_run_and_the_fleet_goes_on(client: Fleet) -> None:
    poison = Workflow("poison", inputs=["v"])
    boom = poison.step("boom", "test.crash", value=poison.input("v"), classes=["cpu"])
    poison.output("out", boom["value"])
    healthy = Workflow("healthy", inputs=["t"])
    healthy.output("out", healthy.step("up", "text.upper", text=healthy.input("t"))["text"])

    start = time.monotonic()
    bad = client.submit(poison, {"v": 1})
    good = client.submit(healthy, {"t": "fine"})
    assert good.get(timeout=60) == {"out": "FINE"}
    with pytest.raises(WorkflowFailed) as failed:
        bad.get(timeout=60)
    assert time.monotonic() - start < 60
    assert failed.value.node == "boom"
    assert "its worker died 2 times" in str(failed.value) and "SIGSEGV" in str(failed.value)
    # not delivered again: the cpu class still serves new work, and nothing of it is queued
    again = client.submit(healthy, {"t": "after"})
    assert again.get(timeout=30) == {"out": "AFTER"}
    time.sleep(1.0)
    lists = ["cpu", *(f"cpu{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)]  # every priority
    assert sum(client.store.redis.llen(name) for name in lists) == 0


def test_a_copy_of_a_running_step_does_not_run_its_op_beside_it(
    client: Fleet, local_fleet: LocalFleet
) -> None:
    """The same message again while its step runs (a broker's redelivery, a sweep, a publish
    repeated for a lost confirm): the copy finds the step's start lease held by a live
    worker, does not run the op, and is sent again for when the lease would lapse -- by
    then the step has recorded its outputs, and the copy is ignored. The step sleeps 8 s:
    the copy must be sent while it runs, after an `inspect` round trip on a busy machine."""
    wf = Workflow("copied", inputs=["v"])
    nap = wf.step("nap", "test.sleep", seconds=8.0, value=wf.input("v"), classes=["io"])
    wf.output("out", nap["value"])
    run = client.submit(wf, {"v": "once"})
    deadline, task = time.monotonic() + 20, None
    while task is None and time.monotonic() < deadline:
        active = client.app.control.inspect(timeout=1.0).active() or {}
        found = [t for ts in active.values() for t in ts if t["kwargs"]["run"]["id"] == run.id]
        task = found[0] if found else None
    assert task is not None, "the step never became active"
    client.app.send_task(STEP_TASK, kwargs=task["kwargs"], task_id=task["id"], queue="io")
    assert run.get(timeout=60) == {"out": "once"}
    assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]  # once
    log = local_fleet.workdir / "logs" / "worker-io.log"
    deadline = time.monotonic() + 60  # the copy comes back when the lease would have lapsed
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.count(f"[{task['id']}] ignored") >= 2:
            break
        time.sleep(0.5)
    assert f"run {run.id}: node nap runs in another copy" in text
    assert text.count(f"[{task['id']}] ignored") == 2  # held, then found recorded
    assert [(e.node, e.status) for e in run.trace()] == [("nap", "succeeded")]


@pytest.mark.slow
def test_a_killed_worker_main_process_strands_nothing(
    fleet_cfg: FleetConfig, tmp_path: Path
) -> None:
    """kill -9 of the io worker's main process, with 40 runs in flight (io prefetches many):
    a new io worker starts, and the sweeper gives back what the dead one held -- in seconds,
    not after visibility_timeout (an hour)."""
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("io-heavy", inputs=["t"])
    nap = wf.step("nap", "test.sleep", seconds=1.0, value=wf.input("t"), classes=["io"])
    wf.output("out", wf.step("up", "text.upper", text=nap["value"], classes=["cpu"])["text"])
    with LocalFleet(
        cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None
    ) as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        runs = [client.submit(wf, {"t": f"r{i}"}) for i in range(40)]
        time.sleep(0.5)
        (io,) = [c for c in fleet.children if c.name == "worker-io"]
        os.kill(io.proc.pid, signal.SIGKILL)
        io.proc.wait(10)
        fleet.children.remove(io)
        start = time.monotonic()
        fleet._start_worker("io")
        done = [r.get(timeout=90) == {"out": f"R{i}"} for i, r in enumerate(runs)]
        assert all(done), f"{done.count(False)} of 40 lost"
        assert time.monotonic() - start < 60


@pytest.mark.slow
def test_up_restarts_what_dies_and_keeps_the_rest(fleet_cfg: FleetConfig, tmp_path: Path) -> None:
    cfg = fleet_cfg.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    wf = Workflow("supervised", inputs=["t"])
    nap = wf.step("nap", "test.sleep", seconds=0.01, value=wf.input("t"), classes=["io"])
    wf.output("out", wf.step("up", "text.upper", text=nap["value"], classes=["cpu"])["text"])
    local = LocalFleet(cfg, ["cpu", "io"], flower=False, workdir=tmp_path, say=lambda s: None)
    with local as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        cpu_pid = next(c.proc.pid for c in fleet.children if c.name == "worker-cpu")
        for name in ("worker-io", "redis"):
            (child,) = [c for c in fleet.children if c.name == name]
            child.proc.kill()
            child.proc.wait(10)
            assert fleet.supervise() == [name]
            fleet.wait_for_workers(60)
            assert client.submit(wf, {"t": name}).get(timeout=60) == {"out": name.upper()}
        # the others were left alone
        assert next(c.proc.pid for c in fleet.children if c.name == "worker-cpu") == cpu_pid
        # A child that keeps dying waits its backoff, which doubles: the clock is given, so the
        # test does not depend on how fast the runs above went.
        (io,) = [c for c in fleet.children if c.name == "worker-io"]
        first = io.restart_at
        for expected, now in ((["worker-io"], first), ([], first + 1.5)):
            (io,) = [c for c in fleet.children if c.name == "worker-io"]
            io.proc.kill()
            io.proc.wait(10)
            assert fleet.supervise(now=now) == expected
        (io,) = [c for c in fleet.children if c.name == "worker-io"]
        assert (io.restarts, io.restart_at) == (2, first + 2.0)  # the second backoff: 2 s
        assert fleet.supervise(now=time.monotonic() + 120) == ["worker-io"]


def test_a_long_retry_countdown_is_not_swept_back_as_stranded(client: Fleet) -> None:
    """A retry waits in its worker's timer until its ETA; the sweeper (grace 4 s here) used to
    restore it as stranded once the countdown passed the grace, and the attempt ran twice."""
    wf = Workflow("patient", inputs=["v"])
    wf.step("flaky", "test.fail", value=wf.input("v"), classes=["cpu"], retries=6)
    run = client.submit(wf, {"v": 1})  # countdowns 0.5, 1, 2, 4, 8 and 16 s: two past grace
    with pytest.raises(WorkflowFailed, match="injected failure"):
        run.get(timeout=90)
    time.sleep(3)  # a swept copy runs beside the original: its own attempts, its own entries
    attempts = [e.status for e in run.trace() if e.node == "flaky"]
    assert attempts == ["retrying"] * 6 + ["failed"], attempts


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "solo", "gevent"])
def test_a_poison_step_on_a_one_process_pool_fails_its_run(
    fleet_cfg: FleetConfig, tmp_path: Path, pool: str
) -> None:
    """A step that kills an io worker's whole process (a thread, solo or gevent pool: no
    child to lose) used to be swept back to each restarted worker for ever. Its start lease
    lapses with the process; each copy that takes it over from a dead holder is counted with
    the run: at max_worker_losses it fails its run, and the restarted io worker serves other
    runs."""
    classes = dict(fleet_cfg.classes)
    classes["io"] = classes["io"].model_copy(update={"pool": pool})
    cfg = fleet_cfg.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "classes": classes}
    )
    poison = Workflow("poison-io", inputs=["v"])
    poison.output(
        "out", poison.step("boom", "test.crash", value=poison.input("v"), classes=["io"])["value"]
    )
    healthy = Workflow("healthy-io", inputs=["t"])
    healthy.output(
        "out",
        healthy.step("nap", "test.sleep", seconds=0, value=healthy.input("t"), classes=["io"])[
            "value"
        ],
    )
    with LocalFleet(cfg, ["io"], flower=False, workdir=tmp_path, say=lambda s: None) as fleet:
        client = Fleet(app=create_app(cfg), cfg=cfg)
        bad = client.submit(poison, {"v": 1})
        deadline = time.monotonic() + 150
        while bad.status() == "running" and time.monotonic() < deadline:
            fleet.supervise()  # as `fleet up` does: the io worker is restarted, with backoff
            time.sleep(0.2)
        with pytest.raises(
            WorkflowFailed, match=r"its worker died running it 2 times \(its start lease lapsed"
        ):
            bad.get(timeout=1)
        fleet.supervise(now=time.monotonic() + 120)  # past any backoff
        fleet.wait_for_workers(60)
        assert client.submit(healthy, {"t": "fine"}).get(timeout=60) == {"out": "fine"}
        # and the worker ran that pool: Celery's own account of it
        stats = client.app.control.inspect(timeout=5).stats() or {}
        pools = {s["pool"]["implementation"] for s in stats.values()}
        module = {"threads": "thread"}.get(pool, pool)
        assert pools == {f"celery.concurrency.{module}:TaskPool"}, pools
