#!/usr/bin/env bash
# systemd-journald for the tests, on a host without systemd as PID 1 (Debian's systemd package).
#
#   tests/services/journald.sh start    # prints JOURNAL_DIR=/run/log/journal/<machine-id> (only line on stdout)
#   tests/services/journald.sh stop     # stops it if this script started it
#   tests/services/journald.sh status
#
# There is one journal socket per host (/run/systemd/journal/socket: what systemd-cat, logger via
# /dev/log and Docker's journald log driver write to). When a journald already serves it, it is
# used as it is. Otherwise one is started with a drop-in configuration of ours
# (/run/systemd/journald.conf.d/collector-tests.conf): volatile storage, so the test journal lives
# in /run/log/journal/<machine-id>, apart from the host's persistent one in /var/log/journal; no
# rate limit (the tests write thousands of lines a second); 64 MB at most.
set -euo pipefail

STATE="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/journald"
PIDFILE="$STATE/journald.pid"
LOG="$STATE/journald.log"
SOCK=/run/systemd/journal/socket
DROPIN=/run/systemd/journald.conf.d/collector-tests.conf
JOURNALD=/lib/systemd/systemd-journald

say() { echo "journald.sh: $*" >&2; }

serving() {
  # a journald is serving the socket when a datagram sent to it is accepted
  [ -S "$SOCK" ] && python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect('$SOCK')" 2>/dev/null
}

journal_dir() {
  local mid
  mid=$(cat /etc/machine-id)
  for d in "/run/log/journal/$mid" "/var/log/journal/$mid"; do
    if ls "$d"/system*.journal >/dev/null 2>&1; then echo "$d"; return 0; fi
  done
  return 1
}

start() {
  mkdir -p "$STATE"
  if ! serving; then
    [ -x "$JOURNALD" ] || { say "$JOURNALD is missing: tests/prepare.sh installs systemd (60-syslog-journal)"; exit 1; }
    [ -s /etc/machine-id ] || systemd-machine-id-setup >&2
    mkdir -p /run/systemd/journal "$(dirname "$DROPIN")"
    printf '[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nRateLimitBurst=0\nRuntimeMaxUse=64M\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\nForwardToKMsg=no\nReadKMsg=no\nAudit=no\n' >"$DROPIN"
    say "starting systemd-journald (log: $LOG)"
    setsid "$JOURNALD" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 100); do serving && break; sleep 0.1; done
    serving || { tail -n 20 "$LOG" >&2; say "journald did not come up"; exit 1; }
  fi
  for _ in $(seq 1 50); do journal_dir >/dev/null && break; sleep 0.1; done
  echo "JOURNAL_DIR=$(journal_dir)"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null && grep -q systemd-journal "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE" "$DROPIN"
  fi
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if serving; then echo "JOURNAL_DIR=$(journal_dir || echo unknown)"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
