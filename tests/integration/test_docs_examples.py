"""Every Python example the docs show (docs/examples/, mirrored word for word in README.md and
docs/: tests/unit/test_docs.py) runs as written: on the real test fleet where it submits."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.deploy.local import LocalFleet

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_quick_start_runs(local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "quick_start.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "'answer': 'MY BLENDER ARRIVED BROKEN'" in out
    # each trace line: node, class, worker -- the worker is of the class the step was routed to
    assert re.search(r"^escalate (\S+) \1@", out, re.M), out


def test_loop_runs_until_its_condition(
    local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(EXAMPLES / "loop.py"), run_name="__main__")
    assert capsys.readouterr().out.strip() == "{'n': 3, 'rounds': 3}"


def test_submitting_many_runs_at_once(
    local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(EXAMPLES / "submit_many.py"), run_name="__main__")
    assert capsys.readouterr().out.strip() == "[True, False, True]"


def test_writing_ops_registers_ops_that_run() -> None:
    """In a process of its own (registering ops is global): the ops are there with what the
    router needs, and they compute."""
    check = (
        "import runpy; from fleet.sdk.registry import registry; "
        f"ns = runpy.run_path({str(EXAMPLES / 'writing_ops.py')!r}); "
        "spec = registry.get('shop.order_status'); cap = registry.get('vision.caption'); "
        "print(spec.kind, spec.outputs, spec.retries, cap.unit, cap.units_of({'images': [1, 2]})); "
        "print(ns['order_status'](1042), ns['caption'](['a.png']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.splitlines() == [
        "tool ('status',) 2 image 2.0",
        "{'status': 'shipped'} {'text': ['an image named a.png']}",
    ]


def test_canvas_example_runs(local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "canvas.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "[support] MY BLENDER BROKE (3 words)",
        "[{'answer': 'A B', 'words': 2}, {'answer': 'C', 'words': 1}]",
        "ONE / TWO",
        "{'answer': 'HELLO CANVAS', 'words': 2}",
    ]


def test_waits_example_parks_and_resumes(
    local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(EXAMPLES / "waits.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "approval waits for signal 'approval'",
        "{'outcome': 'refunded 250 for order A-17, approved by ana'}",
    ]


def test_webhook_example_signals_only_what_is_signed(
    local_fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import hmac
    import json

    from fleet import Fleet
    from fleet.paths import EXAMPLES as WORKFLOWS

    monkeypatch.setenv("APPROVALS_WEBHOOK_SECRET", "s3cret")
    hook = runpy.run_path(str(EXAMPLES / "webhook.py"))["approvals_webhook"]
    run = Fleet().submit(WORKFLOWS / "refund_approval.yaml", {"order": "W-1", "amount": 300})
    body = json.dumps({"run": run.id, "approved": True, "by": "ops"}).encode()
    signed = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hook(body, "0" * 64) == (401, "bad signature")
    assert hook(body, signed) == (202, "accepted")
    assert run.get(timeout=30) == {"outcome": "refunded 300 for order W-1, approved by ops"}
    status, why = hook(body, signed)  # a replay: the run has ended
    assert status == 409 and "has ended" in why
