#!/usr/bin/env bash
# Graylog 6.1's own GELF decoding on 127.0.0.1 (see README.md beside this script).
#
#   tests/peers/graylog/gelf-decode.sh --udp PORT | --tcp PORT --count N --out FILE.ndjson [--timeout S]
#
# Each datagram goes through Graylog's GelfChunkAggregator, each message through Graylog's GelfCodec;
# FILE gets one line per message: {"stored": <the document Graylog indexes>} or {"error": "<Graylog's
# exception>"}. Stdout: {"listening": "udp://127.0.0.1:PORT"} once bound (PORT 0 picks one), and a
# {"summary": ...} line at the end. Exits 0 after N lines, 3 after the timeout (default 60 s).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/peer.sh" GelfDecode "$@"
