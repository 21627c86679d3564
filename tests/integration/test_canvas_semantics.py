"""Celery semantics, exactly: a workflow signature behaves as any task in every canvas, and
adopting the fleet changes nothing in a user's own canvases.

A differential suite (the cases: tests/support/canvas_chains.py and canvas_chords.py, adapted
from Celery's t/integration/test_canvas.py; the harness: canvas_cases.py). Every case runs
with plain tasks on the user's own app and worker in a process that never imports the fleet:
what it observes is the expected value of

- the same case with workflows in the plain twins' places, once with the user's app current
  and once with the fleet's (as ``Fleet()`` leaves it);
- the plain case again in this process, the fleet imported and ``Fleet()`` made, on either app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import NotRegistered

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.constants import WORKFLOW_KWARG
from fleet.deploy.local import LocalFleet
from fleet.errors import WorkflowValidationError
from tests.support import canvastasks as ct
from tests.support.canvas_cases import PLAIN, T, Twins, all_cases, run_all

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _add() -> Workflow:
    wf = Workflow("cs-add", inputs=["n", "y"], defaults={"y": 0})
    total = wf.step("total", "math.add", a=wf.input("n"), b=wf.input("y"))
    wf.output("n", total["result"])
    return wf


def _echo() -> Workflow:
    wf = Workflow("cs-echo", inputs=["v"])
    wf.output("v", wf.step("echo", "test.echo", value=wf.input("v"))["value"])
    return wf


def _fail() -> Workflow:
    wf = Workflow("cs-fail", inputs=["v"])
    wf.output("v", wf.step("bad", "test.fail", message=wf.input("v"))["value"])
    return wf


WORKFLOWS = Twins(add=_add(), echo=_echo(), fail=_fail())
CASES = all_cases()


@pytest.fixture(scope="module")
def user_app(local_fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    """The user's app and its own worker (its default queue), next to the fleet's workers."""
    logs = tmp_path_factory.mktemp("user-worker")
    from tests.support.canvas_user import app

    argv = [sys.executable, "-m", "celery", "-A", "tests.support.canvas_user", "worker"]
    argv += ["-P", "threads", "-c", "8", "-Q", "celery", "-n", f"canvasuser{os.getpid()}@%h"]
    argv += ["--without-mingle", "--without-gossip", "-l", "WARNING"]
    log = open(logs / "user-worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        app.set_current()
        assert ct.identity.si("up").apply_async().get(timeout=60) == "up"
        yield app
    finally:
        _forget_waiters(app)
        proc.terminate()
        proc.wait(20)
        log.close()


def _forget_waiters(app: Celery) -> None:
    """Unsubscribe the results stock Celery still waits on (a restored GroupResult's members:
    stored before it subscribed) while Redis is up, not at interpreter exit after it stopped."""
    backend = app.backend
    for mapping in backend._pending_results:
        for waiters in list(mapping.values()):
            for result in list(waiters.values()):
                backend.remove_pending_result(result)


@pytest.fixture(scope="module")
def expected(user_app: Celery) -> dict[str, Any]:
    """Every case's plain twin, run on the user's app by a process without the fleet."""
    argv = [sys.executable, "-m", "tests.support.canvas_cases"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    observed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    timed_out = [name for name, value in observed.items() if value == "TIMEOUT"]
    assert not timed_out, f"plain twins timed out: {timed_out}"
    return observed


@pytest.fixture(params=["user", "fleet"])
def current(request: pytest.FixtureRequest, user_app: Celery, client: Fleet) -> str:
    """The app a case runs on: the user's, or the fleet's (``Fleet()`` made it current)."""
    (user_app if request.param == "user" else client.app).set_current()
    return str(request.param)


def test_the_suite_is_big_enough_and_the_twins_agree_in_kind(expected: dict[str, Any]) -> None:
    assert len(CASES) >= 30
    assert expected["partial_kwargs"] == {"n": 7}
    assert expected["group_nested_plain_only"] == [1, 2, [3, 4]]
    assert expected["chord_group_header_plain_only"] == [[42, 42]]
    assert "error" in expected["error_in_a_chord_header"][0]  # and its errback was called:
    assert expected["error_in_a_chord_header"][1] is True


@pytest.mark.parametrize("name", list(CASES))
def test_a_workflow_behaves_as_its_plain_twin(
    name: str, current: str, expected: dict[str, Any]
) -> None:
    assert run_all(WORKFLOWS, [name])[name] == expected[name]


@pytest.mark.parametrize("name", list(CASES))
def test_the_fleet_changes_nothing_in_a_plain_canvas(
    name: str, current: str, expected: dict[str, Any]
) -> None:
    assert run_all(PLAIN, [name])[name] == expected[name]


# -- the divergences of issue 40, each as it was reported -------------------------------------


def test_partial_kwargs_are_inputs(current: str) -> None:
    wf = WORKFLOWS.add
    assert ct.add.s(5).apply_async(kwargs={"y": 2}).get(timeout=T) == 7
    assert wf.s(n=5).apply_async(kwargs={"y": 2}).get(timeout=T) == {"n": 7}
    with pytest.raises(WorkflowValidationError, match="bogus"):
        wf.s(n=5).apply_async(kwargs={"bogus": 2}).get(timeout=T)


def test_a_group_led_by_a_user_task_on_the_users_app(user_app: Celery, client: Fleet) -> None:
    user_app.set_current()
    canvas = group(ct.add.si(1, 1), WORKFLOWS.add.si(n=1, y=1))
    assert canvas.apply_async().get(timeout=T) == [2, {"n": 2}]


def test_nested_groups_on_the_fleets_app(client: Fleet) -> None:
    client.app.set_current()
    i = ct.identity
    canvas = group(i.si(1), i.si(2), chain(i.si(5), group(i.si(3), i.si(4))))
    assert canvas.apply_async().get(timeout=T) == [1, 2, [3, 4]]


def test_a_worker_joins_a_chord_whose_header_holds_a_group(current: str) -> None:
    i = ct.identity
    canvas = chord(group(chain(i.s(42), group(i.s(), i.s()))), i.s())
    assert canvas.delay().get(timeout=T) == [[42, 42]]


def test_a_celery_step_naming_an_internal_task_says_so(client: Fleet) -> None:
    for task, owner in (("fleet.step", "the fleet"), ("celery.backend_cleanup", "Celery")):
        wf = Workflow("internal", inputs=["t"])
        wf.output("out", wf.step("s", f"celery:{task}", text=wf.input("t"))["result"])
        message = rf"node 's'.*'{task}' is an internal task of {owner}"
        with pytest.raises(WorkflowValidationError, match=message) as caught:
            client.submit(wf, {"t": "x"})
        assert "no live worker" not in str(caught.value)


# -- what docs/workflows.md says still differs ---------------------------------------------


def test_the_signature_binds_as_a_shared_tasks_does(user_app: Celery, client: Fleet) -> None:
    user_app.set_current()
    sig = WORKFLOWS.add.s(n=1)
    assert sig.app is user_app and ct.add.s(1).app is user_app
    client.app.set_current()
    assert WORKFLOWS.add.s(n=1).app is client.app
    bound: list[Celery] = []
    thread = threading.Thread(target=lambda: bound.append(WORKFLOWS.add.s(n=1).app))
    thread.start()
    thread.join()
    assert bound == [client.app]  # no app current in that thread: not Celery's fallback app
    assert sig.kwargs["n"] == 1 and set(sig.kwargs) == {"n", WORKFLOW_KWARG}
    with pytest.raises(NotRegistered):
        sig()  # only the fleet runs it


def test_the_fleet_sends_what_follows_a_workflow(user_app: Celery, client: Fleet) -> None:
    user_app.set_current()
    mine = f"canvasuser{os.getpid()}@"
    assert ct.where.si().apply_async().get(timeout=T).startswith(mine)
    after = chain(WORKFLOWS.add.si(n=1), ct.where.si()).apply_async().get(timeout=T)
    # routed by the fleet's router, to the control class's queue: a fleet worker runs it
    assert after.startswith(client.cfg.control_class) and not after.startswith(mine)
    there = chain(WORKFLOWS.add.si(n=1), ct.where.si().set(queue="celery")).apply_async()
    assert there.get(timeout=T).startswith(mine)


def test_a_started_run_outlives_revoking_its_task(client: Fleet) -> None:
    client.app.set_current()
    wf = Workflow("cs-slow", inputs=["v"])
    wf.output("v", wf.step("nap", "test.sleep", seconds=1.0, value=wf.input("v"))["value"])
    result = wf.s(v="kept").apply_async()
    deadline = time.monotonic() + T
    while client.handle(result.id).status() != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    result.revoke(terminate=True)
    assert result.get(timeout=T) == {"v": "kept"}
