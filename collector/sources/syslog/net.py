"""The sockets of the syslog source: listen URLs, datagram readers, unix socket files, limits.

Datagram sockets (``udp://``, ``unixgram://``) are drained by an event-loop reader (up to
``READ_BURST`` datagrams per wake-up, one ``recvfrom`` each) into the source's pending list.
Stream sockets (``tcp://``, ``tls://``, ``unix://``) are served by asyncio's servers under the
limits every listener shares (collector/listeners.py); a unix socket's peer is its uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Callable
from typing import Any

from collector.listeners import Listen

log = logging.getLogger("collector.sources.syslog")

READ_BURST = 256
MAX_DATAGRAM = 65535


def hostport(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unix_socket(path: str, kind: int, mode: int) -> socket.socket:
    """A bound unix socket at ``path`` with ``mode``; a stale socket there is replaced, anything
    else is left alone (an error)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        os.chmod(path, mode)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_unix_socket(path: str, sock: socket.socket | None) -> None:
    """Remove the socket file we created (only when it still is one)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def peer_uid(sock: Any) -> int | None:
    """The uid of a unix stream peer (SO_PEERCRED)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):
        return None
    return uid


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE (with CAP_NET_ADMIN: past net.core.rmem_max) when allowed, else SO_RCVBUF."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class DatagramListener:
    """A UDP or unix datagram socket read by the event loop into ``pending``."""

    def __init__(
        self,
        listen: Listen,
        pending: Callable[[], list[tuple[bytes, Any]]],
        on_data: Callable[[int], None],
        rcvbuf: int,
        socket_mode: int,
    ) -> None:
        self.listen = listen
        self._pending = pending
        self._on_data = on_data
        self.want_rcvbuf = rcvbuf
        self.socket_mode = socket_mode
        self.rcvbuf = 0
        self.sock: socket.socket | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._inode = 0
        self._family = 0
        self._drops_seen = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        li = self.listen
        if li.scheme == "unixgram":
            sock = unix_socket(li.path, socket.SOCK_DGRAM, self.socket_mode)
            self.url = f"unixgram://{li.path}"
        else:
            family, _, _, _, addr = socket.getaddrinfo(
                li.host, li.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if self.want_rcvbuf:
                    set_rcvbuf(sock, self.want_rcvbuf)
                sock.bind(addr)
            except BaseException:
                sock.close()
                raise
            self.url = f"udp://{hostport(sock.getsockname())}"
            self._inode, self._family = os.fstat(sock.fileno()).st_ino, family
            self._drops_seen = _proc_drops(self._inode, family)
        sock.setblocking(False)
        if li.scheme == "unixgram" and self.want_rcvbuf:
            set_rcvbuf(sock, self.want_rcvbuf)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports it doubled
        self.sock = sock
        self._loop = loop
        self.resume()

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        pend = self._pending()
        ap = pend.append
        recv = sock.recvfrom
        peer = self.listen.path if self.listen.scheme == "unixgram" else None
        try:
            for _ in range(READ_BURST):
                data, addr = recv(MAX_DATAGRAM)
                ap((data, addr if peer is None else peer))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. ECONNREFUSED surfacing from an ICMP error: not ours to stop on
            log.debug("datagram receive on %s failed: %s", self.url, e)
        self._on_data(len(pend))

    def pause(self) -> None:
        if self._reading and self._loop is not None and self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume(self) -> None:
        if not self._reading and self._loop is not None and self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._readable)
            self._reading = True

    def kernel_drops(self) -> int:
        """UDP datagrams the kernel dropped for this socket (receive buffer full) since the last call."""
        if self.sock is None or not self._inode:
            return 0
        total = _proc_drops(self._inode, self._family)
        delta, self._drops_seen = total - self._drops_seen, total
        return max(0, delta)

    def close(self) -> None:
        self.pause()
        if self.listen.scheme == "unixgram":
            remove_unix_socket(self.listen.path, self.sock)
        elif self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None


def _proc_drops(inode: int, family: int) -> int:
    """The kernel's drop count of a UDP socket, from /proc/net/udp{,6} (0 when unreadable)."""
    path = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    want = str(inode).encode()
    try:
        with open(path, "rb") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) >= 13 and parts[9] == want:
                    return int(parts[-1])
    except (OSError, ValueError):
        pass
    return 0


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
