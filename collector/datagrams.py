"""Datagram listeners (``udp://``, ``unixgram://``) for the GELF and syslog sources, and the unix
socket files they and the stream listeners bind.

A datagram socket is drained by an event-loop reader: one wake-up reads up to ``READ_BURST``
datagrams (one ``recvfrom`` each, no per-datagram callback or await) into the source's pending
list, then tells the source how many wait and how many bytes came (so it can bound what waits
undecoded: it pauses the listener and the kernel's receive buffer holds the rest).  The
kernel's drops (receive buffer full) are read from /proc/net/udp{,6} by the socket's inode, so
they can be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any

from pydantic import Field

from collector.component import ComponentConfig
from collector.listeners import Listen

log = logging.getLogger("collector.datagrams")

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
        on_data: Callable[[int, int], None],
        rcvbuf: int,
        socket_mode: int = 0o660,
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
        self.address: Any = (listen.host, listen.port) if listen.scheme == "udp" else listen.path
        self.receive_errors = 0

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
            self.address = sock.getsockname()
            self.url = f"udp://{hostport(self.address)}"
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
        nbytes = 0
        try:
            for _ in range(READ_BURST):
                data, addr = recv(MAX_DATAGRAM)
                ap((data, addr if peer is None else peer))
                nbytes += len(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. ECONNREFUSED surfacing from an ICMP error: not ours to stop on
            self.receive_errors += 1
            if e.errno not in (errno.ECONNREFUSED, errno.EAGAIN):
                log.debug("datagram receive on %s failed: %s", self.url, e)
        self._on_data(len(pend), nbytes)

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


class DatagramBatch(ComponentConfig):
    """How received messages are grouped (datagrams wait at most ``timeout`` for company; what
    a stream connection reads is decoded as it comes)."""

    max_events: int = Field(2000, ge=1, le=100_000, description="Messages decoded and emitted together at most.")
    max_bytes: int = Field(
        4 << 20, ge=1024, description="Bytes of messages (decompressed) decoded and emitted together at most."
    )
    timeout: float = Field(
        0.005, ge=0, le=1, description="Seconds datagrams may wait to be batched with the next ones."
    )


QUEUE_BYTES = 8 << 20  # datagrams read and not decoded yet: past it the kernel's buffer holds the rest


class DatagramQueue:
    """What a source's datagram listeners read and it has not decoded yet, bounded: past
    ``max_events`` datagrams (or QUEUE_BYTES) a batch is taken at once; past four times that (or
    QUEUE_BYTES) the listeners pause and the kernel's receive buffer holds the rest (its drops
    are counted: :meth:`kernel_drops`)."""

    def __init__(self, max_events: int, timeout: float, rcvbuf: int, socket_mode: int = 0o660) -> None:
        self.max_events = max_events
        self.timeout = timeout
        self.rcvbuf = rcvbuf
        self.socket_mode = socket_mode
        self.listeners: list[DatagramListener] = []
        self.pending: list[tuple[bytes, Any]] = []
        self.pending_bytes = 0
        self.closed = False
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._paused = False

    def open(self, listen: Listen) -> DatagramListener:
        """Bind ``listen`` (udp:// or unixgram://) and start reading it."""
        u = DatagramListener(listen, self._pending, self._on_data, self.rcvbuf, self.socket_mode)
        u.open(asyncio.get_running_loop())
        self.listeners.append(u)
        return u

    def _pending(self) -> list[tuple[bytes, Any]]:
        return self.pending

    def _on_data(self, n: int, nbytes: int) -> None:
        self.pending_bytes += nbytes
        if n >= self.max_events or self.pending_bytes >= QUEUE_BYTES:
            self._full.set()
            if (n >= 4 * self.max_events or self.pending_bytes >= QUEUE_BYTES) and not self._paused:
                self._paused = True  # decoding lags: let the kernel buffer hold the rest
                for u in self.listeners:
                    u.pause()
        self._wake.set()

    async def take(self) -> list[tuple[bytes, Any]] | None:
        """The datagrams waiting (``(data, sender address or unix path)``), once there are
        ``max_events`` of them or the first has waited ``timeout``; None once closed and empty."""
        while True:
            await self._wake.wait()
            if not self.pending:
                self._wake.clear()
                if self.closed:
                    return None
                continue
            if len(self.pending) < self.max_events and not self.closed and self.timeout:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        await self._full.wait()
            items, self.pending = self.pending, []
            self.pending_bytes = 0
            self._wake.clear()
            if self._paused and not self.closed:
                self._paused = False
                for u in self.listeners:
                    u.resume()
            return items

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped (receive buffers full) since the last call."""
        return sum(u.kernel_drops() for u in self.listeners)

    def close(self) -> None:
        """Stop reading; :meth:`take` returns what is left, then None."""
        self.closed = True
        for u in self.listeners:
            u.close()
        self._wake.set()
