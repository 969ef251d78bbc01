#!/usr/bin/env bash
# installing the Debian packages the tests need (first time about 1-2 min)
#
# docker.io (the engine the tests run containers on), busybox-static (the test image), debootstrap
# (the collector image's base), curl, util-linux (setsid, flock), maven and a Java 17 JDK (the
# search engines and the Graylog peer), libzstd1 (Elasticsearch 9's zstd), Go and npm (the test
# peers). Nothing is installed when everything is already there. Elasticsearch 9 needs a Java 21+
# JDK, which Debian 12 does not package: tests/services/elasticsearch.sh names where it looks.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have dockerd || need+=(docker.io)
{ [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx seq; } || need+=(busybox-static)
have debootstrap || need+=(debootstrap)
have curl || need+=(curl)
have flock && have setsid || need+=(util-linux)
have mvn || need+=(maven)
have go || [ -x /usr/local/go/bin/go ] || need+=(golang-go)
have npm || need+=(npm)
ls /usr/lib/jvm/*/bin/javac >/dev/null 2>&1 && \
  for h in /usr/lib/jvm/*; do grep -qs '^JAVA_VERSION="17' "$h/release" && [ -x "$h/bin/javac" ] && exit_ok=1; done
[ "${exit_ok:-0}" = 1 ] || need+=(openjdk-17-jdk-headless)
ldconfig -p 2>/dev/null | grep -q 'libzstd\.so\.1 ' || need+=(libzstd1)
if [ ${#need[@]} -eq 0 ]; then
  echo "all present"
  exit 0
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# apt's lists may be missing on a fresh machine; a failed update still lets cached lists work
apt-get update -q || true
apt-get install -y -q --no-install-recommends "${need[@]}"
