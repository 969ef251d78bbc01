"""What every network listener shares: its limits, the process's file-descriptor budget, and
the table of its connections.

The forward and GELF sources listen on TCP for anyone who can reach them, so each states its
budget in the same fields (:class:`ListenerLimits`, part of both configs) and enforces it the
same way (:class:`ConnectionTable`):

* **how many**: ``max_connections`` per listener, ``max_connections_per_peer`` per client
  address, and never more than the process's open-files limit allows (:func:`fd_budget`; the
  soft limit is raised toward the hard one at start, :func:`raise_fd_limit`).  A connection
  past a limit is closed at once, counted and logged (once per reason per minute);
* **how long**: a TLS or shared-key handshake must finish within ``handshake_timeout``; a
  message must arrive whole within ``read_timeout`` of its first byte (slowloris); a listener at
  its ``max_connections`` closes its longest idle connection (silent for ``idle_timeout`` or
  more) to make room for a new one.  Quiet connections are otherwise kept: a client that does
  not wait for acks (Docker's fluentd driver) loses the record it writes into a connection the
  server just closed;
* **how much memory**: bytes held for messages still arriving, summed over the listener's
  connections, at most ``max_buffered_bytes`` (past ``FREE_BYTES`` each); the connection that
  would go past it is closed.  What a decoder allocates is bounded by its codec (see
  codecs/forward/framer.py: nothing is decoded before the whole message is there).

config.py has the limits and URLs, connections.py the descriptor budget and the table; both are
imported from here.
"""

from __future__ import annotations

from collector.listeners.config import (
    API_SCHEMES,
    DEFAULT_API_LISTEN,
    SCHEMES,
    Listen,
    ListenerConfig,
    ListenerLimits,
    api_url,
    parse_listen,
)
from collector.listeners.connections import (
    ACCEPT_BURST,
    FD_RESERVE_MIN,
    FD_RESERVE_SHARE,
    FREE_BYTES,
    TRIM_AFTER,
    TRIM_INTERVAL,
    ConnectionTable,
    StreamConn,
    Tracked,
    cap_reads,
    drain_handlers,
    fd_budget,
    peer_host,
    raise_fd_limit,
    trim_heap,
    unix_peer_uid,
)

__all__ = [
    "ACCEPT_BURST",
    "API_SCHEMES",
    "DEFAULT_API_LISTEN",
    "FD_RESERVE_MIN",
    "FD_RESERVE_SHARE",
    "FREE_BYTES",
    "SCHEMES",
    "TRIM_AFTER",
    "TRIM_INTERVAL",
    "ConnectionTable",
    "Listen",
    "ListenerConfig",
    "ListenerLimits",
    "StreamConn",
    "Tracked",
    "api_url",
    "cap_reads",
    "drain_handlers",
    "fd_budget",
    "parse_listen",
    "peer_host",
    "raise_fd_limit",
    "trim_heap",
    "unix_peer_uid",
]
