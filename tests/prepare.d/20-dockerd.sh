#!/usr/bin/env bash
# starting the private Docker engine and building its busybox test image (first time about 20 s)
set -euo pipefail
exec "$(dirname "$0")/../services/dockerd.sh" start
