#!/usr/bin/env bash
# build the Graylog 6.1 GELF peer (tests/peers/graylog) from Maven Central (first time about 30 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/peers/graylog/build.sh
