#!/usr/bin/env bash
# Build the fleet's CPU image (docker/Dockerfile) and a Redis image (docker/Dockerfile.redis)
# with podman, from whatever this host can reach:
#   FLEET_IMAGE_BASE   the base image (default: the Dockerfiles' public bases); on a host that
#                      reaches no registry, localhost/debian:bookworm from scripts/setup-podman.sh
#   FLEET_IMAGE_TAG    the fleet image's tag (default agent-fleet:cpu)
#   FLEET_REDIS_TAG    the Redis image's tag (default agent-fleet-redis:7)
# Prebuilt wheels are used when present: .cache/wheels (llama-cpp-python, kept by
# scripts/setup.sh) and pip's find-links folders (a CPU torch); pip's CA bundle (PIP_CERT) is
# mounted into the build when set. Prints the two tags. The images a rebuild leaves untagged
# (the previous image and its build stage, a few GB each) are pruned; the cached layers stay.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${FLEET_IMAGE_TAG:-agent-fleet:cpu}
redis_tag=${FLEET_REDIS_TAG:-agent-fleet-redis:7}
common=()
[ -n "${FLEET_IMAGE_BASE:-}" ] && common+=(--build-arg "BASE=$FLEET_IMAGE_BASE")
args=()
wheels=()
n=0
for dir in .cache/wheels ${PIP_FIND_LINKS:-}; do
  [ -d "$dir" ] || continue
  args+=(-v "$(cd "$dir" && pwd):/wheels/$n:ro")
  wheels+=("/wheels/$n")
  if ls "$dir"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    args+=(--build-arg TORCH_INDEX=)  # the CPU torch is here: no need for PyTorch's index
  fi
  n=$((n + 1))
done
args+=(--build-arg "WHEELS=${wheels[*]}")
if [ -n "${PIP_CERT:-}" ]; then
  args+=(-v "$(dirname "$PIP_CERT"):/run/host-certs:ro"
         --build-arg "CA_BUNDLE=/run/host-certs/$(basename "$PIP_CERT")")
fi
podman build "${common[@]}" -f docker/Dockerfile.redis -t "$redis_tag" docker >&2
podman build "${common[@]}" "${args[@]}" -f docker/Dockerfile -t "$tag" . >&2
podman image prune -f --filter label=agent-fleet.image >/dev/null
echo "$tag $redis_tag"
