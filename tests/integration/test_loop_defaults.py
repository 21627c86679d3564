"""docs/workflows.md, "Agents and loops": a YAML loop whose input starts from a constant (the
sub-workflow's `defaults`) runs as written (issue 44, item 9), as docs/examples/loop.py does."""

from __future__ import annotations

from pathlib import Path

from fleet.client.client import Fleet
from fleet.deploy.local import LocalFleet

DOC = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"


def _block() -> str:
    text = DOC.read_text()
    return text.split("<!-- a loop with a constant start -->\n```yaml\n", 1)[1].split("```", 1)[0]


def test_a_loop_starts_from_its_sub_workflows_default(
    local_fleet: LocalFleet, tmp_path: Path
) -> None:
    (tmp_path / "count.yaml").write_text(_block())
    assert Fleet().submit(tmp_path / "count.yaml", {}).get(timeout=60) == {"n": 3, "rounds": 3}
