#!/usr/bin/env bash
# Run one of the Graylog peer's tools (built first when needed, by build.sh):
#
#   tests/peers/graylog/peer.sh GelfDecode ARGS...     # = gelf-decode.sh
#   tests/peers/graylog/peer.sh GelfSend ARGS...       # Graylog's gelfclient sending GELF
#   tests/peers/graylog/peer.sh InputRequest ARGS...   # a REST body read by Graylog's request classes
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="${1:?usage: peer.sh GelfDecode|GelfSend|InputRequest ARGS...}"; shift
{ read -r java; read -r cp; } < <("$HERE/build.sh")
exec "$java" -Xss1m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dfile.encoding=UTF-8 \
    -cp "$cp" "collector.peers.graylog.$tool" "$@"
