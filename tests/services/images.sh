#!/usr/bin/env bash
# Images for the deploy tests, built on the private Docker engine (tests/services/dockerd.sh).
# No registry is reachable here, so the collector image's base is made locally:
#
#   tests/services/images.sh build-base       # Debian bookworm + python3 (3.11) + venv + ca-certificates,
#                                              # made with debootstrap and `docker import`ed;
#                                              # prints the image reference (only line on stdout)
#   tests/services/images.sh build-collector  # deploy/Dockerfile built FOR REAL on that base
#                                              # (--build-arg BASE=..., --network host to reach PyPI);
#                                              # prints the image reference (only line on stdout)
#   tests/services/images.sh clean            # remove both images and the cached tarball
#
# The debootstrap tarball is cached in ${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/images/
# (keyed by suite and package list), so only the first run pays for debootstrap; the image
# itself lives in the engine's data root as long as that does. The collector build reuses the
# engine's layer cache (dependencies are a layer of their own, redone when pyproject.toml changes).
#
# The base gets one layer on top of the debootstrapped tree: this host's CA bundle
# (HOST_CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt), for builds behind an inspecting proxy.
#
# Environment: DOCKER_HOST (default: whatever `dockerd.sh start` prints), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), COLLECTOR_IMAGE (default collector-test/collector; the build stage is tagged <that>-build).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/images"
SUITE=bookworm
VARIANT=minbase
PACKAGES="python3,python3-venv,ca-certificates"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEY=$(printf '%s|%s|%s|v2' "$SUITE" "$VARIANT" "$PACKAGES" | sha256sum | cut -c1-12)
RAW_IMAGE="collector-test/debian-python-raw:$SUITE-$KEY"
HOST_CA="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CA_KEY=$(sha256sum "$HOST_CA" | cut -c1-8)
BASE_IMAGE="collector-test/debian-python:$SUITE-$KEY-ca$CA_KEY"
TARBALL="$CACHE/debian-$SUITE-python3-$KEY.tar"
COLLECTOR_IMAGE="${COLLECTOR_IMAGE:-collector-test/collector}"

say() { echo "images.sh: $*" >&2; }
die() { say "$*"; exit 1; }

docker_env() {
  if [ -z "${DOCKER_HOST:-}" ]; then
    DOCKER_HOST=$("$HERE/dockerd.sh" start | tail -n 1 | cut -d= -f2-)
    export DOCKER_HOST
  fi
  command -v docker >/dev/null 2>&1 || die "no docker CLI (dockerd.sh installs docker.io, which brings it)"
  # the engine has no BuildKit frontend to pull and the CLI may have no buildx: the classic
  # builder, which deploy/Dockerfile is written for as well
  export DOCKER_BUILDKIT=0
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

make_tarball() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || true
    apt-get install -y -q --no-install-recommends debootstrap >&2
  fi
  mkdir -p "$CACHE"
  local root
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  say "debootstrap $SUITE ($VARIANT + $PACKAGES) from $MIRROR: once, then cached in $TARBALL"
  debootstrap --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 40 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  # what a slim base leaves out: package caches and lists, docs, man pages
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
  "$root/usr/bin/python3" -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "the debootstrapped python3 is not a working 3.11 with venv and ssl"
  chmod 0755 "$root"  # mktemp made it 0700: it becomes the image's /
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$root"
  trap - EXIT
}

build_base() {
  docker_env
  if have_image "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
    return
  fi
  if ! have_image "$RAW_IMAGE"; then
    [ -f "$TARBALL" ] || make_tarball
    say "docker import $TARBALL as $RAW_IMAGE"
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      "$TARBALL" "$RAW_IMAGE" >/dev/null
  fi
  # One layer on top: this host's CA bundle. Where outgoing TLS goes through an inspecting proxy
  # (as here), a build on a pristine Debian could not reach PyPI; the public python base has the
  # same need wherever such a proxy is, and the same cure.
  local ctx
  ctx=$(mktemp -d)
  cp "$HOST_CA" "$ctx/ca-certificates.crt"
  printf '%s\n' "FROM $RAW_IMAGE" \
    'COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt' \
    'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    >"$ctx/Dockerfile"
  docker build -q -t "$BASE_IMAGE" "$ctx" >/dev/null || { rm -rf "$ctx"; die "base build failed"; }
  rm -rf "$ctx"
  echo "$BASE_IMAGE"
}

build_collector() {
  docker_env
  local base
  base=$(build_base)
  local ctx
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" EXIT
  # the build context holds what deploy/Dockerfile copies (as deploy/Dockerfile.dockerignore keeps it
  # for BuildKit users; the classic builder reads only a .dockerignore at the context root)
  tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    -cf "$ctx/context.tar" pyproject.toml README.md requirements collector pipelines dashboards deploy
  say "building $COLLECTOR_IMAGE from deploy/Dockerfile on $base"
  # the build stage is tagged too, so that pruning dangling images (each a full copy of the tree
  # on the engine's vfs storage) keeps the layer cache of the current build and drops older ones
  local args=(--network host --build-arg "BASE=$base" -f deploy/Dockerfile)
  if ! { docker build "${args[@]}" --target build -t "$COLLECTOR_IMAGE-build" - <"$ctx/context.tar" \
        && docker build "${args[@]}" -t "$COLLECTOR_IMAGE" - <"$ctx/context.tar"; } >"$ctx/build.log" 2>&1; then
    tail -n 60 "$ctx/build.log" >&2
    die "docker build failed"
  fi
  docker image prune -f >/dev/null 2>&1 || true
  mkdir -p "$CACHE"
  cp "$ctx/build.log" "$CACHE/collector-build.log"
  rm -rf "$ctx"
  trap - EXIT
  echo "$COLLECTOR_IMAGE"
}

# one build at a time (test runs in parallel share the engine; a prune must not meet a build)
lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 1800 9 || die "another images.sh held the lock for 30 minutes"
}

case "${1:-}" in
  build-base | build-collector | clean) lock ;;
esac

case "${1:-}" in
  build-base) build_base ;;
  build-collector) build_collector ;;
  clean)
    docker_env
    docker image rm -f "$COLLECTOR_IMAGE" "$COLLECTOR_IMAGE-build" "$BASE_IMAGE" "$RAW_IMAGE" >/dev/null 2>&1 || true
    docker image prune -f >/dev/null 2>&1 || true
    rm -f "$TARBALL"
    ;;
  *) echo "usage: $0 build-base|build-collector|clean" >&2; exit 2 ;;
esac
