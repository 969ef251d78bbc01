"""The stream side of the syslog source: a unix socket's peer (its uid), and a connection as the
listeners' table sees it.  Sockets and datagrams: collector/datagrams.py; limits:
collector/listeners.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any


def peer_uid(sock: Any) -> int | None:
    """The uid of a unix stream peer (SO_PEERCRED)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):
        return None
    return uid


class Conn:
    """One stream connection, as the listener's table sees it (listeners.Tracked)."""

    __slots__ = ("held", "killed", "last_active", "message_since", "peer_host", "writer")

    def __init__(self, writer: asyncio.StreamWriter, key: str) -> None:
        self.writer = writer
        self.peer_host = key  # what max_connections_per_peer counts: the address, or uid:N on a unix socket
        self.last_active = asyncio.get_running_loop().time()
        self.message_since: float | None = None
        self.held = 0
        self.killed: str | None = None

    def kill(self, reason: str) -> None:
        self.killed = reason
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
