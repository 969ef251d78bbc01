# Sourced by the service scripts: where services keep their state, and which ports they use.
#
# COLLECTOR_SERVICES_DIR (default /tmp/collector-services) holds every service's state, builds
# and caches. Ports are derived from it, so two checkouts with two services directories on one
# host never collide: the default directory keeps the documented ports (Elasticsearch 9200-9202),
# any other directory gets its own slot of ten ports in 20000-39999 (HTTP) and 40000-59999
# (transport). `service_slot` prints the slot (-1 for the default directory).

SERVICES_DIR="${COLLECTOR_SERVICES_DIR:-/tmp/collector-services}"
DEFAULT_SERVICES_DIR=/tmp/collector-services

service_slot() {
    if [ "$(realpath -m "$SERVICES_DIR")" = "$DEFAULT_SERVICES_DIR" ]; then
        echo -1
    else
        echo $(( $(realpath -m "$SERVICES_DIR" | cksum | cut -d' ' -f1) % 2000 ))
    fi
}

# service_port INDEX DEFAULT_PORT: the HTTP port of the INDEX-th service (0-9) of this directory
service_port() {
    local slot; slot=$(service_slot)
    if [ "$slot" -lt 0 ]; then echo "$2"; else echo $((20000 + slot * 10 + $1)); fi
}

# transport_ports INDEX DEFAULT_RANGE: a port (range) for a node's internal transport layer
transport_ports() {
    local slot; slot=$(service_slot)
    if [ "$slot" -lt 0 ]; then echo "$2"; else echo $((40000 + slot * 10 + $1)); fi
}
