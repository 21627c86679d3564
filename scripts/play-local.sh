#!/usr/bin/env bash
# Run the fleet from containers on this host: `fleet kube --local` rendered and played with
# `podman kube play` (Redis on the redis-data volume, a worker container per class, Flower,
# `fleet metrics`; all on the host's loopback). The images come from scripts/build-image.sh.
#   export FLEET_REDIS_PASSWORD=$(openssl rand -hex 16) FLOWER_BASIC_AUTH=admin:$(openssl rand -hex 12)
#   bash scripts/play-local.sh --values values.yaml      # arguments go to `fleet kube`;
#                                                         # the config: FLEET_CONFIG or ./fleet.toml
#   podman kube down .fleet/fleet-local.yaml              # stop it (the volume stays)
# The credentials become podman secrets, never part of the manifest. Environment:
#   FLEET_REDIS_PORT (6379), FLEET_KUBE_FILE (.fleet/fleet-local.yaml), FLEET_CLI (fleet).
set -euo pipefail
: "${FLEET_REDIS_PASSWORD:?set FLEET_REDIS_PASSWORD, e.g. to \$(openssl rand -hex 16)}"
: "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}"
port=${FLEET_REDIS_PORT:-6379}
out=${FLEET_KUBE_FILE:-.fleet/fleet-local.yaml}

# A podman secret as `podman kube play` reads a Kubernetes Secret: a JSON object of base64
# values (NAME KEY VALUE).
secret() {
  podman secret rm "$1" >/dev/null 2>&1 || true
  printf '{"%s": "%s"}' "$2" "$(printf %s "$3" | base64 -w0)" | podman secret create "$1" - >/dev/null
}
secret fleet-redis password "$FLEET_REDIS_PASSWORD"
secret fleet-broker FLEET_BROKER_URL "redis://:$FLEET_REDIS_PASSWORD@127.0.0.1:$port/0"
secret fleet-flower FLOWER_BASIC_AUTH "$FLOWER_BASIC_AUTH"

mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086  # FLEET_CLI may be a command with arguments
${FLEET_CLI:-fleet} kube --local --redis-port "$port" "$@" -o "$out"
podman kube down "$out" >/dev/null 2>&1 || true
podman kube play "$out" >/dev/null
echo "$out"
