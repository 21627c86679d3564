"""The built wheel, installed into a fresh virtual environment, runs the demo and finds its
profiles, example workflows and plug-in ops -- nothing from the source tree.

The fresh venv gets the wheel with --no-deps; its dependencies come from the project's .venv
through a .pth line (appended to sys.path after the venv's own site-packages, so `fleet`
resolves to the wheel's copy). Run from a temporary directory, away from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from fleet.deploy.local import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_installed_wheel_runs_the_triage_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    _run([*build, "-w", str(dist), str(ROOT)], tmp_path, dict(os.environ))
    (wheel,) = dist.glob("agent_fleet-*.whl")

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    py = fresh / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "PYTHONPATH"))}
    env["FLEET_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["FLEET_DATA_DIR"] = str(tmp_path / "data")
    _run(install, tmp_path, env)

    where = _run(
        [
            str(py),
            "-c",
            "import fleet, fleet.routing.profiles as p; "
            "print(fleet.__file__); print(len(p.current_store().profiles))",
        ],
        tmp_path,
        env,
    ).split()
    assert where[0].startswith(str(site)), where  # the wheel's copy, not the checkout
    assert int(where[1]) > 0  # the packaged profiles ship in the wheel

    demo = [str(fresh / "bin" / "fleet"), "demo", "--triage", "--workdir", str(tmp_path / "w")]
    out = _run(demo, tmp_path, env, timeout=240)
    assert "succeeded" in out and "ESCALATE" in out, out
