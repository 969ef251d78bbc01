"""The UDP side of the GELF source: a non-blocking socket drained by an event-loop reader.

One wake-up of the loop reads up to READ_BURST datagrams (one ``recvfrom`` each, no
per-datagram callback or await), appends them to the source's pending list and tells the
source how many wait and how many bytes they were.  The kernel's drops (receive buffer full) are read from
/proc/net/udp{,6} by the socket's inode, so they can be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("collector.sources.gelf")

READ_BURST = 256
MAX_DATAGRAM = 65535


class UdpListener:
    def __init__(
        self,
        host: str,
        port: int,
        pending: Callable[[], list[tuple[bytes, Any]]],
        on_data: Callable[[int, int], None],
        rcvbuf: int,
    ) -> None:
        self.host = host
        self.port = port
        self._pending = pending
        self._on_data = on_data
        self.want_rcvbuf = rcvbuf
        self.rcvbuf = 0
        self.sock: socket.socket | None = None
        self.address: tuple[Any, ...] = (host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._inode = 0
        self._drops_seen = 0
        self.receive_errors = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.want_rcvbuf:
                set_rcvbuf(sock, self.want_rcvbuf)
            self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports it doubled
            sock.bind(addr)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.address = sock.getsockname()
        self._inode = os.fstat(sock.fileno()).st_ino
        self._drops_seen = _proc_drops(self._inode, family)
        self._family = family
        self._loop = loop
        self.resume()

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        pend = self._pending()
        ap = pend.append
        recv = sock.recvfrom
        nbytes = 0
        try:
            for _ in range(READ_BURST):
                d = recv(MAX_DATAGRAM)
                ap(d)
                nbytes += len(d[0])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. ECONNREFUSED surfacing from an ICMP error: not ours to stop on
            self.receive_errors += 1
            if e.errno not in (errno.ECONNREFUSED, errno.EAGAIN):
                log.debug("UDP receive on %s failed: %s", self.address, e)
        self._on_data(len(pend), nbytes)

    def pause(self) -> None:
        if self._reading and self._loop is not None and self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume(self) -> None:
        if not self._reading and self._loop is not None and self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)
            self._reading = True

    def close(self) -> None:
        self.pause()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket since the last call."""
        if self.sock is None:
            return 0
        total = _proc_drops(self._inode, self._family)
        delta = total - self._drops_seen
        self._drops_seen = total
        return max(0, delta)


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE (with CAP_NET_ADMIN: past net.core.rmem_max) when allowed, else SO_RCVBUF."""
    # Python's socket module does not name it; 33 on Linux
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _proc_drops(inode: int, family: int) -> int:
    path = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    want = str(inode)
    try:
        with open(path, "rb") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) >= 13 and parts[9].decode() == want:
                    return int(parts[-1])
    except OSError:
        pass
    return 0
