#!/usr/bin/env bash
# The main job: set up, start a local fleet (Redis + one worker per hardware class), run the
# sample workflow, print its result and trace, and stop the fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fleet demo "$@"
