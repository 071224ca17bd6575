#!/usr/bin/env bash
# Make a local base image for the gateway and simulator images where no registry is reachable:
# `debootstrap` of Debian bookworm (Python 3.11) plus python3-venv, then `docker import`.
# The image is tagged with a hash of this script's inputs, so a second run is instant; the root
# filesystem is also kept as a tarball under $INFERCDN_CACHE/docker-base (re-imported if the engine's
# storage was wiped).  Prints the tag on its last line, ready for `--build-arg BASE=...`:
#
#     base=$(bash deploy/docker/make-base.sh) && make image BASE="$base"
#
# Needs root (debootstrap) and a Debian mirror (MIRROR, default deb.debian.org).
set -euo pipefail

SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
# python3-venv brings ensurepip (pip inside the venv); ca-certificates for HTTPS clients (Redis over
# TLS, the OpenAI SDK in a shell); tini is not needed (the gateway handles its signals itself).
PACKAGES="python3,python3-venv,ca-certificates${EXTRA:+,$EXTRA}"
# EXTRA=redis-server,prometheus NAME=infercdn-demo-tools: stand-ins for the compose demo's Redis and
# Prometheus images (tests/deploy), for machines that cannot pull redis:7 and prom/prometheus
NAME="${NAME:-infercdn-base}"
CACHE="${INFERCDN_CACHE:-$HOME/.cache/infercdn}/docker-base"

key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" "v1" | sha256sum | cut -c1-12)
tag="${NAME}:${SUITE}-${key}"
tarball="$CACHE/${NAME}-${SUITE}-${key}.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"; exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "make-base.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d "${TMPDIR:-/tmp}/infercdn-base.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "make-base.sh: debootstrap $SUITE ($PACKAGES) into $root ..." >&2
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$tag" >&2
echo "$tag"
