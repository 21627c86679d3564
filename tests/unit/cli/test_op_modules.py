"""README, "Writing ops": ``FLEET_OP_MODULES=myops`` with ``myops.py`` in the current folder
works for the client as for the workers (issue 44, item 9), and a module that is not there
is one clear line, exit 2, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FLEET = str(Path(sys.executable).parent / "fleet")  # the console script: no cwd on sys.path
MYOPS = """from fleet.sdk import op


@op("my.shout")
def shout(text: str) -> dict:
    return {"text": text.upper()}
"""


def _fleet(cwd: Path, modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_OP_MODULES": modules, "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)
    env.pop("FLEET_CONFIG", None)
    return subprocess.run(
        [FLEET, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_an_op_module_in_the_current_folder_is_found(tmp_path: Path) -> None:
    (tmp_path / "myops.py").write_text(MYOPS)
    res = _fleet(tmp_path, "myops", "ops")
    assert res.returncode == 0, res.stderr
    assert "my.shout" in res.stdout


def test_a_missing_op_module_is_one_line_exit_2(tmp_path: Path) -> None:
    res = _fleet(tmp_path, "nothere", "ops")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    text = " ".join(res.stderr.split())
    assert "error: cannot import op module 'nothere'" in text and "PYTHONPATH" in text
