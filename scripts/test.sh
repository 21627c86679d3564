#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, and integration tests on a real Redis server
# and real Celery worker processes (slow ones included). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

# Servers that only the tests start (each on free ports, in a temporary folder): RabbitMQ
# (the AMQP broker tests), PostgreSQL (db.query), Prometheus (scraping `fleet metrics`).
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test: installing Debian packages for the test servers: ${missing[*]}"
  $SUDO apt-get update -qq || exit 1
  # policy-rc.d 101: install the servers without starting their system services.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  rc=$?
  [ "$made_policy" -eq 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || exit 1
fi
# podman and a local Debian base image for the container tests (tests/integration/test_containers.py)
bash scripts/setup-podman.sh >/dev/null || exit 1
export FLEET_TEST_REQUIRE_SERVICES=1  # a missing server fails the run instead of skipping

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
