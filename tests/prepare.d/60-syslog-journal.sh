#!/usr/bin/env bash
# installing rsyslog, util-linux's logger and systemd-journald for the syslog and journald tests (first time about 30 s)
#
# rsyslog is installed without starting it (the tests run their own rsyslogd with their own
# configuration; a system rsyslogd would take /dev/log): a policy-rc.d refuses service starts
# during the install. systemd provides systemd-journald, journalctl and systemd-cat;
# tests/services/journald.sh starts journald (no systemd as PID 1 is needed).
set -euo pipefail
need=()
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
command -v logger >/dev/null 2>&1 || need+=(bsdutils)
{ [ -x /lib/systemd/systemd-journald ] && command -v journalctl >/dev/null 2>&1 && command -v systemd-cat >/dev/null 2>&1; } || need+=(systemd)
if [ ${#need[@]} -eq 0 ]; then
  echo "all present"
  exit 0
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -q || true
apt-get install -y -q --no-install-recommends "${need[@]}"
