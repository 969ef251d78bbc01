#!/usr/bin/env bash
# building the collector image (debootstrap base, then deploy/Dockerfile; first time about 4-8 min)
set -euo pipefail
exec "$(dirname "$0")/../services/images.sh" build-collector
