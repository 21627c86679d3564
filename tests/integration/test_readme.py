"""The README's Python quick start runs as written, on the real fleet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet.runtime.local import LocalFleet

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_runs(local_fleet: LocalFleet, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    quick_start = blocks[0]
    assert "Fleet().submit" in quick_start
    exec(compile(quick_start, "README quick start", "exec"), {})
    out = capsys.readouterr().out
    assert "'answer': 'MY BLENDER ARRIVED BROKEN'" in out
    # each trace line: node, class, worker -- the worker is of the class the step was routed to
    assert re.search(r"^escalate (\S+) \1@", out, re.M), out
