#!/usr/bin/env bash
# installing the Node.js test peer (@fluent-org/logger from npm, locked; first time about 10 s)
#
# tests/peers/node-fluent is copied to $COLLECTOR_SERVICES_DIR/node/node-fluent and installed
# there with `npm ci` (package-lock.json, integrity hashes checked); again only when its files
# change. tests/peers/node_fluent.py runs this same script from a session fixture, so a local
# pytest run of one file works too.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/peers/node-fluent"
dest="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}/node/node-fluent"
stamp=$(cat "$src/package.json" "$src/package-lock.json" "$src/send.js" | sha256sum | cut -c1-16)
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ] && [ -d "$dest/node_modules/@fluent-org/logger" ]; then
  echo "up to date"
  exit 0
fi
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm are needed" >&2; exit 1; }
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$src/send.js" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
echo "$stamp" > "$dest/.stamp"
