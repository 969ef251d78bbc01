"""A listener's connections: the process's file-descriptor budget and the table that admits,
times out, evicts and charges the memory of each connection (:class:`ConnectionTable`).  The
package docstring (``collector/listeners/__init__.py``) states the rules."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from collector.listeners.config import ListenerLimits
from collector.ratelog import RateLimitedLog

log = logging.getLogger("collector.listeners")

TRIM_AFTER = 1000  # connections closed before the C heap is trimmed (at most every TRIM_INTERVAL s)
TRIM_INTERVAL = 10.0
FREE_BYTES = 32 << 10  # held by a connection without being charged (a Docker line is at most 16 KiB)
FD_RESERVE_MIN = 64  # descriptors kept for files, outputs and the event loop ...
FD_RESERVE_SHARE = 8  # ... or 1/8 of the limit when that is more ...
ACCEPT_BURST = 100  # ... and per TCP listener twice what asyncio accepts at once (its backlog) before
# any of them is refused: refused ones are closed at the loop's next turn


# -- the process's open files ----------------------------------------------------------------------
def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (as Go and systemd services do); returns
    ``(soft, hard)`` as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # some sandboxes refuse it: keep what we have
            log.debug("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
    return soft, hard


def fd_budget() -> int:
    """Connections the listeners of this process may hold together: the soft open-files
    limit minus a reserve for everything else, including the accept bursts of its listeners."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    reserve = max(FD_RESERVE_MIN, soft // FD_RESERVE_SHARE) + 2 * ACCEPT_BURST * _tcp_listeners[0]
    return max(16, soft - reserve)


_process_connections = [0]  # open connections of every listener in this process
_tcp_listeners = [0]  # TCP servers accepting in this process


# -- connections -------------------------------------------------------------------------------------
class Tracked(Protocol):
    """What the table needs to know of a connection."""

    peer_host: str  # the client's address without the port ("" for a Unix socket)
    last_active: float  # loop.time() of its last read
    message_since: float | None  # loop.time() the message now arriving began, None between messages
    held: int  # bytes charged to max_buffered_bytes

    def kill(self, reason: str) -> None:
        """Close now (no more reading); ``reason`` is a counter label."""


class StreamConn:
    """One stream connection served by asyncio's server, as the table sees it (:class:`Tracked`)."""

    __slots__ = ("held", "killed", "last_active", "message_since", "peer_host", "writer")

    def __init__(self, writer: asyncio.StreamWriter, peer_host: str) -> None:
        self.writer = writer
        self.peer_host = peer_host  # what max_connections_per_peer counts: the address, or uid:N on a unix socket
        self.last_active = _now()
        self.message_since: float | None = None
        self.held = 0
        self.killed: str | None = None

    def kill(self, reason: str) -> None:
        self.killed = reason
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


async def drain_handlers(handlers: set[asyncio.Task[Any]], timeout: float) -> None:
    """Let the connection handlers end (their writers are closed; one waiting for room in the
    pipeline delivers first); those still running after ``timeout`` seconds are cancelled."""
    if handlers:
        _, late = await asyncio.wait(handlers, timeout=timeout)
        for t in late:
            t.cancel()


def unix_peer_uid(sock: Any) -> int | None:
    """The uid of a unix stream socket's peer (SO_PEERCRED), None when unknown."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):
        return None
    return uid


class ConnectionTable:
    """The connections of one listener: admission, idle eviction, timeouts, memory."""

    def __init__(
        self,
        name: str,
        limits: ListenerLimits,
        count: Callable[[str], None],
        say: RateLimitedLog | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.count = count
        self.say = say or RateLimitedLog(log, prefix=f"{name}: ")
        self.conns: OrderedDict[Tracked, None] = OrderedDict()  # least recently active first
        self.per_peer: dict[str, int] = {}
        self.held = 0
        self.closed = 0  # since the last trim
        self._trimmed_at = 0.0
        self.fd_budget = fd_budget()
        self.max_connections = min(limits.max_connections, self.fd_budget)
        self._listening = 0

    def listening(self, servers: int = 1) -> None:
        """``servers`` TCP servers of this listener accept connections now (the descriptor
        budget keeps room for their accept bursts)."""
        self._listening += servers
        _tcp_listeners[0] += servers
        self.fd_budget = fd_budget()
        self.max_connections = min(self.limits.max_connections, self.fd_budget)
        if self.max_connections < self.limits.max_connections:
            log.warning(
                "%s: max_connections %d is above what the open-files limit (ulimit -n) allows; serving at most %d",
                self.name,
                self.limits.max_connections,
                self.max_connections,
            )

    def stopped_listening(self) -> None:
        """Its servers stopped accepting."""
        _tcp_listeners[0] -= self._listening
        self._listening = 0

    def __len__(self) -> int:
        return len(self.conns)

    # -- admission -----------------------------------------------------------------------------
    def admit(self, peer: str, peer_host: str) -> bool:
        """May a new connection from ``peer`` be served?  Refusals are counted and logged; a
        full listener first closes its longest idle connection."""
        lim = self.limits
        if (
            peer_host
            and self.per_peer.get(peer_host, 0) >= lim.max_connections_per_peer
            and not self._evict_idle(peer_host)
        ):
            return self._refuse(
                "too_many_connections_from_peer",
                "refused %s: too many connections from that address (%d, max_connections_per_peer)",
                peer,
                self.per_peer[peer_host],
            )
        budget = self.fd_budget = fd_budget()
        full = len(self.conns) >= self.max_connections or _process_connections[0] >= budget
        if full and not self._evict_idle():
            if _process_connections[0] >= budget:
                return self._refuse(
                    "too_many_connections",
                    "refused %s: too many connections (%d open in this process, near the open-files limit)",
                    peer,
                    _process_connections[0],
                )
            return self._refuse(
                "too_many_connections",
                "refused %s: too many connections (%d open, max_connections; none idle for %.0fs)",
                peer,
                len(self.conns),
                lim.idle_timeout,
            )
        return True

    def _refuse(self, reason: str, msg: str, *args: Any) -> bool:
        self.count(reason)
        self.say.warning(reason, msg, *args)
        return False

    def _evict_idle(self, peer_host: str | None = None) -> bool:
        """Close the longest idle connection (of ``peer_host`` when given) if it has been idle
        for ``idle_timeout``; False when none has."""
        oldest = next((c for c in self.conns if peer_host is None or c.peer_host == peer_host), None)
        if oldest is None:
            return False
        idle = _now() - oldest.last_active
        if idle < self.limits.idle_timeout:
            return False
        self.count("idle_evicted")
        self.say.warning(
            "idle_evicted",
            "closed a connection from %s idle for %.0fs to make room for a new one (%s reached)",
            oldest.peer_host or "unix",
            idle,
            "max_connections" if peer_host is None else "max_connections_per_peer",
        )
        self.discard(oldest)
        oldest.kill("idle_evicted")
        return True

    def add(self, conn: Tracked) -> None:
        self.conns[conn] = None
        if conn.peer_host:
            self.per_peer[conn.peer_host] = self.per_peer.get(conn.peer_host, 0) + 1
        _process_connections[0] += 1

    def discard(self, conn: Tracked) -> None:
        if conn not in self.conns:
            return
        del self.conns[conn]
        if conn.peer_host:
            n = self.per_peer.get(conn.peer_host, 0) - 1
            if n > 0:
                self.per_peer[conn.peer_host] = n
            else:
                self.per_peer.pop(conn.peer_host, None)
        _process_connections[0] -= 1
        self.closed += 1
        if conn.held:
            self.held -= conn.held
            conn.held = 0

    # -- while serving ---------------------------------------------------------------------------
    def active(self, conn: Tracked, now: float, buffered: int, held: int | None = None) -> bool:
        """A read happened; ``buffered`` bytes of a message are still awaited, ``held`` bytes
        (default: ``buffered``) are held in memory for it.  False when the connection must be
        closed (over the memory budget: counted and logged here)."""
        conn.last_active = now
        with contextlib.suppress(KeyError):
            self.conns.move_to_end(conn)
        if buffered:
            if conn.message_since is None:
                conn.message_since = now
        else:
            conn.message_since = None
        charge = max(0, (buffered if held is None else held) - FREE_BYTES)
        if charge != conn.held:
            self.held += charge - conn.held
            conn.held = charge
            if charge and self.held > self.limits.max_buffered_bytes:
                self.count("memory_budget")
                self.say.warning(
                    "memory_budget",
                    "closed %s: its message still arriving (%d bytes) would take the listener's buffered "
                    "bytes past max_buffered_bytes (%d)",
                    conn.peer_host or "unix",
                    buffered,
                    self.limits.max_buffered_bytes,
                )
                return False
        return True

    async def watch(self) -> None:
        """Close connections whose message has been arriving for longer than ``read_timeout``."""
        timeout = self.limits.read_timeout
        tick = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = _now()
            if self.closed >= TRIM_AFTER and now - self._trimmed_at >= TRIM_INTERVAL:
                self.closed = 0
                self._trimmed_at = now
                trim_heap()
            late = [c for c in self.conns if c.message_since is not None and now - c.message_since > timeout]
            for c in late:
                self.count("read_timeout")
                self.say.warning(
                    "read_timeout",
                    "closed a connection from %s: its message did not finish arriving within %.0fs (read_timeout)",
                    c.peer_host or "unix",
                    timeout,
                )
                self.discard(c)
                c.kill("read_timeout")


_malloc_trim: Any = None


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``).

    Thousands of short connections leave glibc's arenas fragmented: the memory is free but
    stays in the process (measured: +28 MB after 8,000 connections, back to +7 MB after a
    trim).  Elsewhere (musl, macOS) this does nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
    if _malloc_trim:
        _malloc_trim(0)


def _now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def cap_reads(writer: asyncio.StreamWriter, size: int) -> None:
    """Make the transport read at most ``size`` bytes from the socket at a time.

    A stream buffers up to twice its ``limit`` before it pauses reading, *plus* what one read
    brings, and asyncio's socket transport reads up to 256 KiB at a time: a client that sends
    fast then costs ~400 KiB, whatever the listener's own limits.  (``max_size`` is an
    attribute of asyncio's selector transports; TLS transports read through their own.)
    """
    transport = writer.transport
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]


def peer_host(peername: Any) -> str:
    """The address part of a socket's peer name ("" for Unix sockets)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return ""
