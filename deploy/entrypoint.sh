#!/bin/sh
# The image's entrypoint: `collector ARGS` (or any other command, e.g. `sh`), after one check
# that turns a silent failure into a loud one: the containers directory is mounted but this
# user cannot read it (run the tailing sidecar with `--user 0`, see deploy/README.md).
set -eu

containers=${COLLECTOR_DOCKER_ROOT:-${DOCKER_ROOT:-/var/lib/docker}}/containers  # (DOCKER_ROOT: its name before COLLECTOR_*)
if [ -d "$containers" ] && ! ls "$containers" >/dev/null 2>&1; then
    echo "collector: cannot read $containers as uid $(id -u): Docker keeps it root:root 0700." >&2
    echo "collector: tail it as uid 0 without capabilities:" >&2
    echo "collector:   docker run --user 0 --cap-drop ALL --security-opt no-new-privileges --read-only ..." >&2
    echo "collector: (the default unprivileged user is for the forward/GELF receivers)" >&2
    exit 2
fi

case "${1:-}" in
    "" | -* | tail | run | receive | validate | setup | health) exec collector "$@" ;;
    *) exec "$@" ;;
esac
