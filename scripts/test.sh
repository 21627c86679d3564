#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, and integration tests on a real Redis server
# and real Celery worker processes (slow ones included). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

.venv/bin/ruff check fleet workers tests || exit 1
.venv/bin/ruff format --check fleet workers tests || exit 1
.venv/bin/mypy fleet workers || exit 1

.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
