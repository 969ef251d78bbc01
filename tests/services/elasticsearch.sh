#!/usr/bin/env bash
# Run a real single-node search engine for the tests, inside one JVM, built from Maven Central jars
# (no container image or vendor download needed).
#
#   tests/services/elasticsearch.sh start|stop|restart|status|url|reset|build [--engine es8|es9|os2] [--port N] [--fresh]
#
#   start    build the launcher if needed, start the node, wait for health yellow/green and print its
#            URL (the only line on stdout). Already running: just print the URL. --fresh wipes data first.
#   stop     SIGTERM, wait, SIGKILL if needed; returns once the HTTP port is free. Not running: no-op.
#   restart  stop + start (data kept).
#   status   "running <url> pid <pid>" (exit 0) or "stopped" (exit 3).
#   url      print the URL.
#   reset    stop and wipe the engine's state (data, logs).
#   build    only build (or check the cached build).
#
# Engines: es8 = Elasticsearch 8.19 on Java 17 (port 9200), es9 = Elasticsearch 9.x on a Java 21+ JDK
# (port 9201), os2 = OpenSearch 2.19 on Java 17 (port 9202); all three can run at once.
#
# Environment:
#   SEARCH_ENGINE              default engine (es8)
#   SEARCH_ENGINE_PORT         HTTP port (same as --port)
#   SEARCH_ENGINE_HEAP         heap size, default 1g
#   SEARCH_ENGINE_TIMEOUT      seconds to wait for the node to become healthy, default 120
#   COLLECTOR_SERVICES_DIR     state root, default /tmp/collector-services; the engine keeps
#                              data/, logs/, console.log, pid and port under <root>/<engine>/, and
#                              its build under <root>/build/<engine>/. Ports follow the directory
#                              (common.sh): 9200-9202 for the default one, a slot of their own otherwise.
#   JAVA17_HOME, JAVA21_HOME   JDKs to use (default: found under /usr/lib/jvm)
#   MVN                        maven command (default mvn)
#
# Builds are cached in <root>/build/<engine>/ and redone when the pom or sources change.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/search-engine"
# shellcheck source=tests/services/common.sh
. "$HERE/common.sh"
STATE_ROOT="$SERVICES_DIR"
BUILD_ROOT="$STATE_ROOT/build"

die() { echo "elasticsearch.sh: $*" >&2; exit 1; }
log() { echo "elasticsearch.sh: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

# ---- arguments ---------------------------------------------------------------------------------
CMD="${1:-}"; [ -n "$CMD" ] || usage; shift
ENGINE="${SEARCH_ENGINE:-es8}"; PORT="${SEARCH_ENGINE_PORT:-}"; FRESH=0
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
        --engine=*) ENGINE="${1#*=}"; shift ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --fresh) FRESH=1; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done

# ---- per-engine configuration ------------------------------------------------------------------
# java_major: the JDK the engine is built and run with; transport: port range for the (unused)
# transport layer, disjoint between engines so that all three can run together.
case "$ENGINE" in
    es8) JAVA_MAJOR=17; DEFAULT_PORT=$(service_port 0 9200); TRANSPORT=$(transport_ports 0 9300-9349) ;;
    es9) JAVA_MAJOR=21; DEFAULT_PORT=$(service_port 1 9201); TRANSPORT=$(transport_ports 1 9350-9399) ;;
    os2) JAVA_MAJOR=17; DEFAULT_PORT=$(service_port 2 9202); TRANSPORT=$(transport_ports 2 9400-9449) ;;
    *) die "unknown engine '$ENGINE' (es8, es9 or os2)" ;;
esac
STATE="$STATE_ROOT/$ENGINE"
BUILD="$BUILD_ROOT/$ENGINE"
PID_FILE="$STATE/pid"
PORT_FILE="$STATE/port"
CONSOLE="$STATE/console.log"
NODE_LOG="$STATE/logs/node.log"
# Used to recognise our own process in `ps`/procfs (a pid file can go stale).
MARKER="-Dsearchengine.instance=$STATE"

if [ -z "$PORT" ]; then
    # a node started with --port keeps answering on it: later calls without --port follow it
    if [ -f "$PORT_FILE" ] && [ "$CMD" != start ] && [ "$CMD" != restart ]; then PORT="$(cat "$PORT_FILE")"; else PORT="$DEFAULT_PORT"; fi
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port: $PORT"
URL="http://127.0.0.1:$PORT"

# ---- helpers -----------------------------------------------------------------------------------
java_version_of() { # major version of a JDK home, from its release file
    sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$1/release" 2>/dev/null
}

find_java_home() { # $1 = wanted major: 17 means exactly 17 (what es8/os2 are tested on), 21 means 21+
    local want="$1" candidates=() h v
    if [ "$want" = 17 ]; then
        candidates=("${JAVA17_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/*17*)
    else
        candidates=("${JAVA21_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/*)
    fi
    for h in "${candidates[@]}"; do
        [ -n "$h" ] && [ -x "$h/bin/java" ] && [ -x "$h/bin/javac" ] || continue
        v="$(java_version_of "$h")"; [ -n "$v" ] || continue
        if { [ "$want" = 17 ] && [ "$v" = 17 ]; } || { [ "$want" != 17 ] && [ "$v" -ge "$want" ]; }; then
            echo "$h"; return 0
        fi
    done
    return 1
}

apt_install() { # install Debian packages when we can (root, apt); false otherwise
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    log "installing $* (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2; }
}

apt_has() { apt-cache show "$1" >/dev/null 2>&1; }

resolve_java() { # sets JAVA_HOME_FOR_ENGINE / JAVA_RUNTIME_MAJOR (needed to build and to start only)
    [ -z "${JAVA_HOME_FOR_ENGINE:-}" ] || return 0
    if ! JAVA_HOME_FOR_ENGINE="$(find_java_home "$JAVA_MAJOR")"; then
        # Debian has Java 17 (bookworm) and 21 (trixie); Elasticsearch 9 needs 21 or later
        local pkg
        for pkg in "openjdk-$JAVA_MAJOR-jdk-headless" $([ "$JAVA_MAJOR" = 17 ] || echo openjdk-25-jdk-headless); do
            if apt_has "$pkg" && apt_install "$pkg"; then break; fi
        done
        JAVA_HOME_FOR_ENGINE="$(find_java_home "$JAVA_MAJOR")" || die "$ENGINE needs a Java $JAVA_MAJOR$([ "$JAVA_MAJOR" = 17 ] \
            && echo ' JDK: looked in $JAVA17_HOME and /usr/lib/jvm/*17*; Debian: apt-get install openjdk-17-jdk-headless' \
            || echo '+ JDK, which this Debian does not package: looked in $JAVA21_HOME and /usr/lib/jvm/*; install one (e.g. Temurin 21+ under /usr/lib/jvm) or set JAVA21_HOME')"
    fi
    JAVA_RUNTIME_MAJOR="$(java_version_of "$JAVA_HOME_FOR_ENGINE")"
    command -v "${MVN:-mvn}" >/dev/null 2>&1 || apt_install maven || die "Maven 3.8+ is needed to build $ENGINE (apt-get install maven)"
}

is_ours() { # pid $1 is this engine's node (its command line carries the marker)
    [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' < "/proc/$1/cmdline" | grep -qxF -- "$MARKER"
}

pid_alive() { # our node process is alive; refreshes a missing/stale pid file from the process table
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && is_ours "$pid"; then return 0; fi
    for pid in $(pgrep -f -- "$MARKER" 2>/dev/null || true); do
        if is_ours "$pid"; then echo "$pid" > "$PID_FILE"; return 0; fi
    done
    return 1
}

port_in_use() { # something accepts connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

healthy() { # cluster health is yellow or green
    local body
    body="$(curl -fsS -m 5 "$URL/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null)" || return 1
    [[ "$body" == *'"status":"green"'* || "$body" == *'"status":"yellow"'* ]]
}

show_logs() {
    echo "---- $CONSOLE (tail) ----" >&2; tail -n 40 "$CONSOLE" >&2 2>/dev/null || true
    echo "---- $NODE_LOG (tail) ----" >&2; tail -n 40 "$NODE_LOG" >&2 2>/dev/null || true
}

# Build (or reuse) the launcher: classes jar + lib/ with all runtime dependencies.
build() {
    local module="$SRC/$ENGINE" stamp_file="$BUILD/.stamp" stamp out
    resolve_java
    local inputs=("$module" "$SRC/resources")
    [ "$ENGINE" = os2 ] || inputs+=("$SRC/es-common")
    # stamp = content hash of every build input + the JDK that builds it
    stamp="$( { find "${inputs[@]}" -type f -print0 | sort -z | xargs -0 sha256sum; echo "$JAVA_HOME_FOR_ENGINE"; } | sha256sum | cut -c1-64)"
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && compgen -G "$BUILD/*.jar" >/dev/null && [ -d "$BUILD/lib" ]; then
        return 0
    fi
    log "building $ENGINE launcher with maven (JDK $JAVA_RUNTIME_MAJOR) into $BUILD ..."
    rm -rf "$BUILD"; mkdir -p "$BUILD"
    local maven_opts="${MAVEN_OPTS:-}"
    # Maven 3.8's bundled guava warns about sun.misc.Unsafe on JDK 24+
    [ "$JAVA_RUNTIME_MAJOR" -lt 24 ] || maven_opts="$maven_opts --sun-misc-unsafe-memory-access=allow"
    if ! out="$(JAVA_HOME="$JAVA_HOME_FOR_ENGINE" MAVEN_OPTS="$maven_opts" ${MVN:-mvn} -B -q -f "$module/pom.xml" \
            -Dengine.build.dir="$BUILD" package 2>&1)"; then
        echo "$out" >&2
        die "maven build of $ENGINE failed"
    fi
    echo "$stamp" > "$stamp_file"
}

jvm_options() {
    local heap="${SEARCH_ENGINE_HEAP:-1g}"
    JVM_OPTS=(
        "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -Xss1m -XX:+ExitOnOutOfMemoryError -XX:-OmitStackTraceInFastThrow
        -Djava.awt.headless=true -Dfile.encoding=UTF-8 "-Djava.io.tmpdir=$STATE/tmp"
        -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0
        # keep log4j alive until our shutdown hook has closed the node
        -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
        "-Dsearchengine.log.file=$NODE_LOG" "$MARKER"
    )
    case "$ENGINE" in
        es8)
            JVM_OPTS+=(-Djava.locale.providers=CLDR) ;;
        es9)
            # Lucene 10 / ES native access use the FFM API; the vector module is what the real
            # distribution enables too. Elasticsearch's entitlement agent is only installed by the real
            # bootstrap (Elasticsearch.main), which we do not run, so nothing needs disabling.
            # Native libraries: see link_zstd; ES's own SIMD library (libvec) is not available, so
            # switch it off (else native access as a whole, zstd included, gets disabled).
            JVM_OPTS+=(-Djava.locale.providers=CLDR --enable-native-access=ALL-UNNAMED --add-modules=jdk.incubator.vector
                       "-Des.nativelibs.path=$STATE/native" -Dorg.elasticsearch.nativeaccess.enableVectorLibrary=false) ;;
        os2)
            JVM_OPTS+=(-Djava.locale.providers=SPI,COMPAT) ;; # as OpenSearch's own jvm.options on JDK 17
    esac
}

# Elasticsearch 9 compresses stored fields of best_compression indices with zstd through its own native
# loader, which only looks in es.nativelibs.path (the distribution ships libzstd there). Point it at the
# system's libzstd (Debian: libzstd1) when there is one; without it such indices fail to refresh.
link_zstd() {
    local lib
    lib="$( { ldconfig -p 2>/dev/null | awk '/libzstd\.so\.1 .*x86-64|libzstd\.so\.1 .*AArch64/ {print $NF; exit}'; } || true)"
    [ -n "$lib" ] || lib="$(ls /usr/lib/x86_64-linux-gnu/libzstd.so.1 /usr/lib/aarch64-linux-gnu/libzstd.so.1 2>/dev/null | head -1 || true)"
    mkdir -p "$STATE/native"
    if [ -n "$lib" ]; then ln -sfn "$lib" "$STATE/native/libzstd.so"; fi
}

wait_healthy() { # $1 = pid
    local pid="$1" deadline=$((SECONDS + ${SEARCH_ENGINE_TIMEOUT:-120}))
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs; rm -f "$PID_FILE"
            die "$ENGINE node exited during startup (see $CONSOLE, $NODE_LOG)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs
            do_stop >/dev/null 2>&1 || true
            die "$ENGINE node not healthy after ${SEARCH_ENGINE_TIMEOUT:-120}s (see $CONSOLE, $NODE_LOG)"
        fi
        sleep 0.5
    done
}

do_start() {
    if pid_alive; then
        local running_port; running_port="$(cat "$PORT_FILE" 2>/dev/null || echo "$PORT")"
        [ "$running_port" = "$PORT" ] || die "$ENGINE is already running on port $running_port (stop it first)"
        # (possibly started a moment ago by a concurrent call) wait for it rather than start another one
        wait_healthy "$(cat "$PID_FILE")"
        if [ "$FRESH" = 1 ]; then do_stop; else echo "$URL"; return 0; fi
    fi
    port_in_use "$PORT" && die "port $PORT is already in use by another process (try --port)"
    build
    [ "$FRESH" = 1 ] && rm -rf "$STATE/data" "$STATE/logs" "$STATE/home" "$CONSOLE"
    mkdir -p "$STATE/data" "$STATE/logs" "$STATE/home" "$STATE/tmp"
    [ "$ENGINE" = es9 ] && link_zstd
    jvm_options
    local settings=(
        "path.home=$STATE/home" "path.data=$STATE/data" "path.logs=$STATE/logs"
        "node.name=$ENGINE-node" "cluster.name=collector-test-$ENGINE"
        network.host=127.0.0.1 "http.port=$PORT" "transport.port=$TRANSPORT"
        discovery.type=single-node cluster.routing.allocation.disk.threshold_enabled=false
    )
    # console.log keeps the history of starts/stops; keep it bounded
    if [ -f "$CONSOLE" ] && [ "$(stat -c %s "$CONSOLE")" -gt 5000000 ]; then mv -f "$CONSOLE" "$CONSOLE.1"; fi
    echo "==== $(date -u +%FT%TZ) start $ENGINE on $URL (JDK $JAVA_RUNTIME_MAJOR: $JAVA_HOME_FOR_ENGINE)" >> "$CONSOLE"
    # setsid: own session, so the node outlives the calling shell/test process group;
    # 9>&-: the node must not inherit (and so keep holding) this script's lock.
    setsid "$JAVA_HOME_FOR_ENGINE/bin/java" "${JVM_OPTS[@]}" -cp "$BUILD/*:$BUILD/lib/*" \
        collector.searchengine.Launcher "${settings[@]}" >> "$CONSOLE" 2>&1 < /dev/null 9>&- &
    local pid=$!
    echo "$pid" > "$PID_FILE"; echo "$PORT" > "$PORT_FILE"
    wait_healthy "$pid"
    echo "$URL"
}

do_stop() {
    local pid
    if ! pid_alive; then rm -f "$PID_FILE"; return 0; fi
    pid="$(cat "$PID_FILE")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$ENGINE (pid $pid) did not stop within 30s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    deadline=$((SECONDS + 15))
    while port_in_use "$PORT"; do
        [ "$SECONDS" -lt "$deadline" ] || die "port $PORT still in use after stopping $ENGINE"
        sleep 0.2
    done
}

# One start/stop at a time per engine (tests may call start from several processes).
mkdir -p "$STATE"
case "$CMD" in
    start|stop|restart|reset|build) exec 9> "$STATE/.lock"; flock 9 ;;
esac

case "$CMD" in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_stop; do_start ;;
    reset) do_stop; rm -rf "$STATE/data" "$STATE/logs" "$STATE/home" "$STATE/tmp" "$STATE/native" "$CONSOLE" "$PORT_FILE" ;;
    status)
        if pid_alive && healthy; then echo "running $URL pid $(cat "$PID_FILE")"
        elif pid_alive; then echo "starting $URL pid $(cat "$PID_FILE")"; exit 3
        else echo "stopped"; exit 3; fi ;;
    url) echo "$URL" ;;
    build) build ;;
    *) usage ;;
esac
