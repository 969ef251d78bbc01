#!/usr/bin/env bash
# A private Docker engine for the tests: Debian's docker.io, its own data root and socket.
#
#   tests/services/dockerd.sh start    # installs what is missing, starts dockerd, builds the
#                                      # test image; prints DOCKER_HOST=unix://... (only line on stdout)
#   tests/services/dockerd.sh stop
#   tests/services/dockerd.sh status
#
# Idempotent. State lives in ${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/dockerd.
# No registry is reachable, so the test image is built FROM scratch with busybox-static:
# collector-test/busybox:latest (sh, echo, printf, sleep, seq, head, tr ... ).
set -euo pipefail

STATE="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/dockerd"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
IMAGE="collector-test/busybox:latest"
export DOCKER_HOST="unix://$SOCK"

say() { echo "dockerd.sh: $*" >&2; }

install_missing() {
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx seq || pkgs+=(busybox-static)
  if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || true
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
  fi
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [ -S "$SOCK" ]
}

api_ok() {
  curl -sf --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
}

build_image() {
  if curl -sf --unix-socket "$SOCK" "http://localhost/images/${IMAGE%%:*}:latest/json" >/dev/null 2>&1; then
    return 0
  fi
  say "building $IMAGE (FROM scratch + busybox-static)"
  local ctx
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["sh"]
DOCKERFILE
  # the engine's own API (no CLI/buildx version concerns): POST /build with a tar context
  tar -C "$ctx" -cf "$ctx.tar" .
  curl -sf --unix-socket "$SOCK" -X POST -H "Content-Type: application/x-tar" \
    --data-binary "@$ctx.tar" "http://localhost/build?t=$IMAGE&rm=1&forcerm=1" >"$STATE/build.log" \
    || { cat "$STATE/build.log" >&2; say "image build failed"; exit 1; }
  rm -rf "$ctx" "$ctx.tar"
  grep -q '"errorDetail"' "$STATE/build.log" && { cat "$STATE/build.log" >&2; exit 1; }
  curl -sf --unix-socket "$SOCK" "http://localhost/images/${IMAGE%%:*}:latest/json" >/dev/null
}

start() {
  install_missing
  mkdir -p "$STATE/root" "$STATE/exec"
  if ! running; then
    say "starting dockerd (log: $LOG)"
    # --exec-root and --pidfile of our own so a host dockerd (if any) is untouched
    setsid dockerd \
      --host "unix://$SOCK" \
      --data-root "$STATE/root" \
      --exec-root "$STATE/exec" \
      --pidfile "$PIDFILE" \
      --storage-driver=vfs \
      --iptables=false --ip6tables=false \
      --bridge=none \
      --log-level=warn \
      >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 150); do
      api_ok && break
      sleep 0.2
    done
  fi
  if ! api_ok; then
    tail -n 30 "$LOG" >&2 || true
    say "dockerd did not come up"
    exit 1
  fi
  build_image
  echo "DOCKER_HOST=$DOCKER_HOST"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      # containers first, so the engine stops quickly
      for id in $(curl -sf --unix-socket "$SOCK" "http://localhost/containers/json?all=1" 2>/dev/null \
                  | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
        curl -sf --unix-socket "$SOCK" -X DELETE "http://localhost/containers/$id?force=1" >/dev/null 2>&1 || true
      done
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
  fi
  # what the engine left mounted (its network namespace, a container's rootfs): without this,
  # `rm -rf` of the services directory fails with "Device or resource busy"
  awk -v d="$STATE/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && api_ok; then echo "DOCKER_HOST=$DOCKER_HOST"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
