#!/usr/bin/env bash
# building the Go test peers (go-gelf reader, fluent-logger-golang and golf senders, the Compose reference loader, Prometheus's config loader and PromQL parser; first time about 4 min)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
go=$(command -v go || echo /usr/local/go/bin/go)
bin="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/bin"
mkdir -p "$bin"
for d in peers/gelf-reader peers/fluent-go peers/golf-writer deploy/composecheck deploy/promcheck; do
  (cd "$here/$d" && "$go" build -o "$bin/$(basename "$d")" .)
done
