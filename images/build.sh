#!/usr/bin/env bash
# Build the control-plane image and the Selkies 2.x session image with podman, with no container
# registry: the bases are made here with debootstrap from Debian's mirror when they are missing,
# then both images are smoke-tested (images/smoke.py). As root, with podman, buildah, runc and
# debootstrap from apt.
#
#   bash images/build.sh            # bases if missing, build, smoke-test
#   bash images/build.sh --no-smoke # build only
#
# The defaults of the Dockerfiles stay the public bases (python:3.11-slim, python:3.12-slim,
# ubuntu:24.04); this script passes the local ones as build arguments. The local Debian base
# trusts what this machine trusts (its /usr/local/share/ca-certificates), so apt and pip inside
# the build reach the registries this machine reaches; images built on the public bases get
# none of this machine's set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=localhost/vdi-base/debian:$SUITE
PYTHON_IMAGE=localhost/vdi-base/python:3.11
CONTROL_IMAGE=${CONTROL_IMAGE:-localhost/vdi-control:ci}
SESSION_IMAGE=${SESSION_IMAGE:-localhost/vdi-session-selkies:ci}
export CONTAINERS_CONF="$PWD/images/containers.conf"

for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null || {
    echo "images/build.sh: $tool is missing (apt-get install podman buildah debootstrap runc)" >&2
    exit 2
  }
done
[ "$(id -u)" = 0 ] || { echo "images/build.sh: run as root (podman with runc here)" >&2; exit 2; }

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.1f", b - a }'; }

if ! podman image exists "$DEBIAN_IMAGE"; then
  started=$(seconds)
  root=$(mktemp -d /var/tmp/vdi-debootstrap.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >/dev/null
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "== base $DEBIAN_IMAGE: debootstrap --variant=minbase $SUITE in $(elapsed "$started") s"
fi
if ! podman image exists "$PYTHON_IMAGE"; then
  started=$(seconds)
  podman build --pull=never --quiet -t "$PYTHON_IMAGE" \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" -f images/python-base.Containerfile images >/dev/null
  echo "== base $PYTHON_IMAGE in $(elapsed "$started") s"
fi

size() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

started=$(seconds)
# --format docker: OCI images have no HEALTHCHECK, podman would drop the Dockerfile's
podman build --pull=never --format docker --quiet -t "$CONTROL_IMAGE" \
  --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -f Dockerfile . >/dev/null
echo "== $CONTROL_IMAGE built in $(elapsed "$started") s, $(size "$CONTROL_IMAGE")"

started=$(seconds)
podman build --pull=never --format docker --quiet -t "$SESSION_IMAGE" \
  --build-arg BUILD_IMAGE="$PYTHON_IMAGE" --build-arg RUNTIME_IMAGE="$DEBIAN_IMAGE" \
  -f agent/Dockerfile.selkies . >/dev/null
echo "== $SESSION_IMAGE built in $(elapsed "$started") s, $(size "$SESSION_IMAGE")"

if [ "${1:-}" != "--no-smoke" ]; then
  python=${PYTHON:-.venv/bin/python}
  "$python" -m images.smoke --control-image "$CONTROL_IMAGE" --session-image "$SESSION_IMAGE"
fi
