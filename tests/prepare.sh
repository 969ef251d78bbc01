#!/usr/bin/env bash
# One-time preparation for the tests, done before pytest starts so that no slow first step
# (a Debian package, a Maven or npm download, an image build) can ever turn into a test error.
#
#   bash tests/prepare.sh [STEP...]     # every step of tests/prepare.d/, or the named ones
#
# Each step is tests/prepare.d/NN-name.sh: idempotent (quick when already done), caching under
# $COLLECTOR_SERVICES_DIR, and its second line is "# <what it does> (first time about N)".
# The step's own output goes to $COLLECTOR_SERVICES_DIR/prepare/<step>.log; on failure its tail
# is printed and the preparation stops.
set -euo pipefail
cd "$(dirname "$0")/.."
export COLLECTOR_SERVICES_DIR="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}"
LOGS="$COLLECTOR_SERVICES_DIR/prepare"
mkdir -p "$LOGS"

steps=()
if [ $# -gt 0 ]; then
  for s in "$@"; do steps+=(tests/prepare.d/*"$s"*.sh); done
else
  steps=(tests/prepare.d/*.sh)
fi

for step in "${steps[@]}"; do
  [ -f "$step" ] || continue
  name=$(basename "$step" .sh)
  what=$(sed -n 2p "$step" | sed 's/^# *//')
  printf 'prepare: %s ... ' "$what" >&2
  t0=$SECONDS
  if ! bash "$step" >"$LOGS/$name.log" 2>&1; then
    echo "FAILED after $((SECONDS - t0)) s" >&2
    tail -n 40 "$LOGS/$name.log" >&2
    echo "prepare: step $step failed (whole log: $LOGS/$name.log)" >&2
    exit 1
  fi
  echo "done in $((SECONDS - t0)) s" >&2
done
