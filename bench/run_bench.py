"""Run the heterogeneous-routing benchmark (the same as `fleet bench`).

python bench/run_bench.py --quick          # a few minutes: the CI smoke run
python bench/run_bench.py                  # full: see docs/benchmarks.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.cli.main import cli

if __name__ == "__main__":
    cli(["bench", *sys.argv[1:]], prog_name="run_bench.py")
