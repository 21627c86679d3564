"""Waiting for a run's end (``RunStore.wait``) on a real Redis: every waiter of a run wakes
when it ends, a wait gives up at its timeout, and the marker waiters block on stays."""

from __future__ import annotations

import threading
import time
import uuid

from fleet.store.runs import RunStore


def _run(store: RunStore) -> str:
    run_id = uuid.uuid4().hex
    store.create(run_id, "one", {}, {"t": "x"}, spec="digest")
    return run_id


def test_every_waiter_of_a_run_wakes_when_it_ends(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    run_id = _run(store)
    seen: list[str | None] = []

    def wait() -> None:
        info = store.wait(run_id, timeout=10)
        seen.append(info.status if info else None)

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.3)  # all three blocked on the run's marker
    assert seen == []
    store.succeed(run_id, {"out": "X"})
    for t in waiters:
        t.join(5)
    assert seen == ["succeeded"] * 3
    done = store._key(run_id, "done")
    assert store.redis.llen(done) == 1  # still there for a later waiter, with its lifetime
    assert 0 < store.redis.ttl(done) <= 600
    info = store.wait(run_id, timeout=1)
    assert info is not None and info.outputs == {"out": "X"}


def test_a_wait_gives_up_at_its_timeout(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    run_id = _run(store)
    start = time.monotonic()
    info = store.wait(run_id, timeout=0.5)
    assert info is not None and info.status == "running"
    assert 0.5 <= time.monotonic() - start < 10  # (the upper bound: it did not hang)


def test_no_record_no_wait(redis_url: str) -> None:
    store = RunStore(redis_url, 600)
    start = time.monotonic()
    assert store.wait(uuid.uuid4().hex, timeout=30) is None
    assert time.monotonic() - start < 10  # at once, not at the timeout
