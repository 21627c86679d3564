"""A step is routed only where it can run: a `celery:` step to the classes whose live workers
have its task (it went to the preferred class, whose worker logged "unregistered task" while
the run hung), and a step with no eligible class is refused naming its node (IndexError)."""

from __future__ import annotations

import pytest

from fleet.config import FleetConfig
from fleet.errors import Unroutable
from fleet.routing.router import FleetRouter, take_decision
from fleet.routing.state import CachedState, FleetState, WorkerInfo
from tests.support.states import FixedReader


def _router(cfg: FleetConfig, tasks: dict[str, frozenset[str]]) -> FleetRouter:
    """Live workers of the classes in ``tasks``, each with those plain tasks registered."""
    workers = {
        c: [WorkerInfo(f"{c}@h", (c,), 1, "prefork", 1, 0.0, tasks=t)] for c, t in tasks.items()
    }
    state = FleetState(workers=workers, depth={}, fetched_at=0.0)
    return FleetRouter(cfg, CachedState(FixedReader(cfg, state), ttl=60))


def _call(op: str, classes: list[str]) -> dict[str, object]:
    return {"path": "count", "op": op, "kind": "tool", "classes": classes, "args": {}}


def test_a_celery_step_goes_to_a_class_whose_workers_have_its_task(cfg: FleetConfig) -> None:
    router = _router(cfg, {"cpu": frozenset(), "io": frozenset({"shop.count_words"})})
    call = _call("celery:shop.count_words", ["cpu", "io"])  # cpu preferred, and live
    assert router("fleet.step", (), {"call": call, "run": {}}, {}) == {"queue": "io"}
    decision = take_decision("fleet.step")
    assert decision is not None and decision.cls == "io"


def test_a_celery_step_no_live_worker_has_is_unroutable(cfg: FleetConfig) -> None:
    router = _router(cfg, {"cpu": frozenset({"other.task"}), "io": frozenset()})
    call = _call("celery:shop.count_words", ["cpu", "io"])
    with pytest.raises(Unroutable, match=r"node 'count'.*no live worker of class\(es\) cpu, io"):
        router("fleet.step", (), {"call": call, "run": {}}, {})


def test_a_celery_step_waits_like_any_step_while_no_class_is_live(cfg: FleetConfig) -> None:
    router = _router(cfg, {"gpu": frozenset()})
    call = _call("celery:shop.count_words", ["cpu", "io"])
    assert router("fleet.step", (), {"call": call, "run": {}}, {}) == {"queue": "cpu"}


def test_a_step_without_an_eligible_class_is_unroutable_naming_it(cfg: FleetConfig) -> None:
    router = _router(cfg, {"cpu": frozenset()})
    with pytest.raises(Unroutable, match=r"node 'count' \(op text.upper\): no eligible class"):
        router("fleet.step", (), {"call": _call("text.upper", []), "run": {}}, {})
