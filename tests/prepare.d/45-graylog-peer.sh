#!/usr/bin/env bash
# building the Graylog 6.1 GELF peer from Maven Central (tests/peers/graylog; first time about 30 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/peers/graylog/build.sh
