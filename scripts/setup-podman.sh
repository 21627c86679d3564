#!/usr/bin/env bash
# Make the container tests runnable on a Debian machine: Debian's podman with runc, and a local
# Debian base image (localhost/debian:bookworm) made with debootstrap, for machines that reach
# the Debian mirror and PyPI but no container registry. Idempotent; needs root. Prints the base
# image's name. Elsewhere, build docker/Dockerfile from its default public base instead.
set -euo pipefail
BASE_TAG=${FLEET_IMAGE_BASE:-localhost/debian:bookworm}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-podman: installing Debian packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# On VMs with hybrid cgroups crun refuses to start containers, and raising the default
# RLIMIT_NOFILE/NPROC is not permitted: runc, and no default ulimits.
if ! grep -qs 'runtime = "runc"' /etc/containers/containers.conf; then
  $SUDO mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' \
    | $SUDO tee /etc/containers/containers.conf >/dev/null
fi
if ! $SUDO podman image exists "$BASE_TAG"; then
  echo "setup-podman: building $BASE_TAG with debootstrap (1-2 min, once)" >&2
  root=$(mktemp -d)
  $SUDO debootstrap --variant=minbase bookworm "$root" >/dev/null
  $SUDO tar -C "$root" -c . | $SUDO podman import - "$BASE_TAG" >/dev/null
  $SUDO rm -rf "$root"
fi
echo "$BASE_TAG"
