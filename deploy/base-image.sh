#!/usr/bin/env bash
# A local Python 3.11 base image for air-gapped sites, where Docker Hub (and so
# flwr/superexec) cannot be reached: a minimal Debian bookworm root file system made by
# debootstrap from the Debian mirror, imported into Docker.
#
#   sudo deploy/base-image.sh [IMAGE_TAG]        # default local/debian-py311:bookworm
#   docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=local/debian-py311:bookworm ...
#
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine.
# DEBIAN_MIRROR overrides the mirror (default: debootstrap's own, deb.debian.org).
set -euo pipefail

tag=${1:-local/debian-py311:bookworm}
command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "base-image.sh: no Docker engine answers (start dockerd)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" ${DEBIAN_MIRROR:-} >/dev/null
# The apt lists and caches are not needed in the image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "base-image.sh: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'), $(docker run --rm "$tag" python3 --version))"
