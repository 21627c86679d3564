"""Speech for the demo, the evaluation and the benchmarks: a text spoken to a WAV file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fleet.errors import FleetError


def speak_to_file(text: str, path: Path, voice: str = "en-us", speed: int = 165) -> Path:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FleetError("espeak-ng is not installed (apt-get install espeak-ng)")
    argv = [binary, "-v", voice, "-s", str(speed), "-w", str(path), text]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return path
