#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (this is what CI runs).
#
#   bash tests/run.sh [pytest args]
#
# Creates .venv, installs the project with its test extras, checks style (ruff), then runs
# pytest. Tests start the real services they need themselves (tests/services/*.sh: a private
# Docker engine, Elasticsearch 8 and 9, OpenSearch 2) and nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check collector tests bench
.venv/bin/ruff format --check collector tests bench

exec .venv/bin/python -m pytest -ra "$@"
