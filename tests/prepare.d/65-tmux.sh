#!/usr/bin/env bash
# installing tmux, the real terminal the progress-bar and top tests draw into (first time about 10 s)
set -euo pipefail
if command -v tmux >/dev/null 2>&1; then
  echo "all present"
  exit 0
fi
echo "installing: tmux"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q || true
apt-get install -y -q --no-install-recommends tmux
