"""What a broker restart test asserts of the runs that went through it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def assert_every_step_ran(
    runs: Iterable[Any], nodes: set[str], running: int, twice_allowed: bool = True
) -> None:
    """Every step of every run ran. A copy of a step that arrives while another runs it finds
    its start lease held and does not run the op (fleet/store/leases.py); ``twice_allowed``:
    where the leases live in the restarted server itself, a step may run once more, never
    more -- copies queued in a thread pool beside the broker's redeliveries used to run too
    (3 and more) -- and no more steps ran twice than could be running at the restart
    (``running``: the slots of their classes)."""
    twice = []
    for run in runs:
        done = [e.node for e in run.trace() if e.status == "succeeded"]
        assert set(done) == nodes, (run.id, done)
        assert all(done.count(n) <= 2 for n in done), (run.id, done)
        twice += [n for n in set(done) if done.count(n) == 2]
    print(f"steps that ran twice: {len(twice)} ({sorted(twice)})")
    assert len(twice) <= (running if twice_allowed else 0), twice
