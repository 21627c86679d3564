#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine with Python 3.11:
# redis-server (Debian package) and a virtual environment .venv with the project and its
# dev tools. Idempotent: a second run only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing the project into .venv (pip install -e '.[dev]')"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi
echo "setup: ready ($(.venv/bin/python -c 'import celery; print("celery", celery.__version__)'), $(redis-server --version | cut -d' ' -f3))"
