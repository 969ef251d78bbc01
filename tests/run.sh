#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (this is what CI runs).
#
#   bash tests/run.sh [pytest args]
#
# Phases, each timed (the summary at the end gives them all):
#   python   .venv with the locked dependencies (requirements/test.txt, hashes checked)
#   lint     ruff check + ruff format --check (ruff pinned exactly in the lock)
#   prepare  tests/prepare.sh: Debian packages, the private Docker engine, Elasticsearch 8 and 9
#            and OpenSearch 2 from Maven Central, the collector image, the test peers. Every
#            one-time step happens here, before pytest, so a slow first step on a busy machine
#            can never become a test error.
#   tests    pytest (nothing is skipped)
#
# Services this run started are stopped when it ends, pass or fail; KEEP_SERVICES=1 keeps them
# for the next run (local iteration). Services that were already running are left alone.
# Everything lives under COLLECTOR_SERVICES_DIR (default /tmp/collector-services).
set -euo pipefail
cd "$(dirname "$0")/.."
export COLLECTOR_SERVICES_DIR="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}"
mkdir -p "$COLLECTOR_SERVICES_DIR"

T0=$SECONDS
PHASES=()
phase_start() { PHASE="$1"; PT0=$SECONDS; echo "==> $1: $2" >&2; }
phase_end() { PHASES+=("$PHASE $((SECONDS - PT0)) s"); }

# -- which services run already (those are not ours to stop) --------------------------------
engines=${COLLECTOR_TEST_ENGINES:-es8,es9,os2}
was_running=()
tests/services/dockerd.sh status >/dev/null 2>&1 && was_running+=(dockerd)
tests/services/journald.sh status >/dev/null 2>&1 && was_running+=(journald)
for e in ${engines//,/ }; do
  tests/services/elasticsearch.sh status --engine "$e" >/dev/null 2>&1 && was_running+=("$e")
done
# processes of the services directory that were there before us (a kept engine and its children)
before_pids=" $( (pgrep -f -- "$COLLECTOR_SERVICES_DIR/" 2>/dev/null || true) | tr '\n' ' ') "

cleanup() {
  local rc=$?
  if [ "${KEEP_SERVICES:-0}" != 1 ]; then
    for e in ${engines//,/ }; do
      [[ " ${was_running[*]} " == *" $e "* ]] || tests/services/elasticsearch.sh stop --engine "$e" >/dev/null 2>&1 || true
    done
    [[ " ${was_running[*]} " == *" dockerd "* ]] || tests/services/dockerd.sh stop >/dev/null 2>&1 || true
    [[ " ${was_running[*]} " == *" journald "* ]] || tests/services/journald.sh stop >/dev/null 2>&1 || true
    # anything else started from the services directory (a test peer left behind by a killed test)
    local mine=" $$ " p=$$
    while p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) && [ "${p:-0}" -gt 1 ]; do mine+="$p "; done
    for pid in $(pgrep -f -- "$COLLECTOR_SERVICES_DIR/" 2>/dev/null || true); do
      [[ "$mine" != *" $pid "* ]] || continue  # this script and whoever called it
      [[ "$before_pids" != *" $pid "* ]] || continue  # not ours: it ran before this run
      echo "tests/run.sh: stopping a leftover process: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)" >&2
      kill "$pid" 2>/dev/null || true
    done
    stopped="services stopped (KEEP_SERVICES=1 keeps them)"
  else
    stopped="services kept running (KEEP_SERVICES=1)"
  fi
  echo "==> phases: ${PHASES[*]/%/,} total $((SECONDS - T0)) s; $stopped;" \
    "$COLLECTOR_SERVICES_DIR holds $(du -sh "$COLLECTOR_SERVICES_DIR" 2>/dev/null | cut -f1)" >&2
  exit $rc
}
trap cleanup EXIT

# -- python ------------------------------------------------------------------------------------
phase_start python "virtualenv .venv from requirements/test.txt (first time about 1 min)"
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11+ is needed, this is {sys.version}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=$(cat requirements/test.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements/test.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  .venv/bin/python -m pip check --disable-pip-version-check >/dev/null
  echo "$stamp" >.venv/.installed
fi
phase_end

# -- lint --------------------------------------------------------------------------------------
phase_start lint "ruff check, ruff format --check"
.venv/bin/ruff check -q collector tests bench
.venv/bin/ruff format -q --check collector tests bench
phase_end

# -- prepare -----------------------------------------------------------------------------------
phase_start prepare "one-time steps (tests/prepare.sh; cached in $COLLECTOR_SERVICES_DIR)"
bash tests/prepare.sh
phase_end

# -- tests -------------------------------------------------------------------------------------
phase_start tests "pytest"
set +e
.venv/bin/python -m pytest -ra --durations=30 "$@"
rc=$?
set -e
phase_end
exit $rc
