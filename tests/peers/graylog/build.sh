#!/usr/bin/env bash
# Build (or reuse) the Graylog peer: Graylog 6.1's GELF code and REST classes from Maven Central.
#
#   tests/peers/graylog/build.sh          # prints two lines: the java to run it with, the class path
#
# Output: $COLLECTOR_SERVICES_DIR/build/graylog-peer/ (the peer's jar + lib/ with every dependency
# jar), rebuilt when pom.xml, a source file or the JDK changes; concurrent calls wait for one build.
# Environment: JAVA17_HOME (default /usr/lib/jvm/java-17-openjdk-amd64, or java on PATH), MVN
# (default mvn), GRAYLOG_PEER_M2 (a Maven local repository instead of ~/.m2, e.g. to time a cold build).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES_DIR="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}"
BUILD="$SERVICES_DIR/build/graylog-peer"
mkdir -p "$SERVICES_DIR/build"

java_home() {
    if [ -n "${JAVA17_HOME:-}" ]; then echo "$JAVA17_HOME"; return; fi
    local h; for h in /usr/lib/jvm/java-17-openjdk-*; do [ -x "$h/bin/javac" ] && { echo "$h"; return; }; done
    local j; j="$(command -v java)" || { echo "graylog peer: no Java 17 (set JAVA17_HOME)" >&2; exit 1; }
    dirname "$(dirname "$(readlink -f "$j")")"
}
JAVA_HOME="$(java_home)"
export JAVA_HOME

exec 9>"$SERVICES_DIR/build/graylog-peer.lock"
flock 9
stamp="$( { find "$HERE/pom.xml" "$HERE/src" -type f -print0 | sort -z | xargs -0 sha256sum; echo "$JAVA_HOME"; } | sha256sum | cut -c1-64)"
if ! { [ -f "$BUILD/.stamp" ] && [ "$(cat "$BUILD/.stamp")" = "$stamp" ] && [ -f "$BUILD/graylog-peer-1.jar" ]; }; then
    echo "graylog peer: building with maven into $BUILD ..." >&2
    rm -rf "$BUILD"
    args=(-B -q -f "$HERE/pom.xml" "-Dgraylog.peer.build.dir=$BUILD")
    [ -z "${GRAYLOG_PEER_M2:-}" ] || args+=("-Dmaven.repo.local=$GRAYLOG_PEER_M2")
    if ! out="$(${MVN:-mvn} "${args[@]}" package 2>&1)"; then
        echo "$out" >&2
        echo "graylog peer: maven build failed" >&2
        exit 1
    fi
    echo "$stamp" > "$BUILD/.stamp"
fi
echo "$JAVA_HOME/bin/java"
echo "$BUILD/graylog-peer-1.jar:$BUILD/lib/*"
