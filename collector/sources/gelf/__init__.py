"""Source ``gelf``: GELF 1.1 over UDP (plain, gzip, zlib, chunked), TCP and TLS.

What Docker's ``--log-driver=gelf`` sends, and graypy, logback-gelf, Graylog sidecars ...

UDP (``udp://host:port``) is read by a callback that only drains the socket (up to
``READ_BURST`` datagrams per wake-up) into a list; every ``batch.timeout`` seconds, or as soon
as ``batch.max_events`` datagrams wait, the list is decoded in one go and emitted as batches
(one per host/tag/container, see mapping.py).  UDP cannot push back, so when the pipeline
has no room the datagrams are dropped and counted (``collector_events_dropped_total{reason=
"pipeline_full"}``), and so are the ones the kernel dropped because the socket's receive
buffer overflowed (``reason="receive_buffer_full"``, read from /proc/net/udp).  Set
``receive_buffer_bytes`` for the bursts you expect (see the README).  What is read and not
decoded yet is bounded (collector/datagrams.py: ``batch.max_events`` datagrams, 8 MiB), and messages are
decoded ``batch.max_bytes`` (decompressed) at a time before they are emitted, so a flood of
compressed messages costs bounded memory.

TCP (``tcp://``, ``tls://`` with ``tls``) is null-byte framed JSON; a full pipeline stops the
reading, so the senders slow down: nothing is dropped.  Its connections follow the limits every
listener states (collector/listeners.py: connections in all and per address, TLS handshake,
read and idle timeouts, bytes held for frames still arriving), refusals counted and logged.

Bad input never stops the server: malformed messages (bad JSON or compression, no
``short_message``, too large) go to the dead-letter file with the peer's address (at
most ``dead_letter_per_second`` per second and the dead letter's byte rate, the rest only
counted); chunk-level trouble (expired, evicted, duplicated, too many chunks) is only counted,
in ``collector_errors_total{component,reason}``, and logged once per reason per minute.  GELF
has no delivery identity: record ids are random and batches carry no acknowledgement.  A
message without ``host`` (GELF requires one; Fluent Bit's ``gelf`` output leaves it out when
the record has none) is accepted: its ``host.name`` is the sender's address, flagged
``log.flags: [host_from_peer]`` and counted (``reason="missing_host"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from collector.codecs.gelf import (
    CHUNK_MAGIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    FrameSplitter,
    GelfError,
    Reassembler,
    decode_sized,
)
from collector.component import Context, Emitter, ServerTls, Source
from collector.datagrams import DatagramBatch, DatagramQueue, hostport
from collector.event import Batch, Fields
from collector.listeners import ConnectionTable, ListenerConfig, StreamConn, cap_reads, drain_handlers, peer_host
from collector.ratelog import RateLimitedLog
from collector.sources.gelf.mapping import Mapper

log = logging.getLogger("collector.sources.gelf")

TCP_READ_BYTES = 64 << 10  # per read (the socket is paused past twice STREAM_LIMIT: 128 KiB a connection at most)
STREAM_LIMIT = 32 << 10
TCP_DRAIN_SECONDS = 10.0
HOUSEKEEPING_INTERVAL = 1.0
DROP_LOG_INTERVAL = 10.0
SCHEMES = ("udp", "tcp", "tls")  # listen URLs served


class GelfSourceConfig(ListenerConfig):
    listen_schemes: ClassVar[tuple[str, ...]] = SCHEMES
    type: Literal["gelf"]
    listen: list[str] = Field(
        min_length=1,
        description="Addresses to receive GELF on: `udp://127.0.0.1:12201`, `tcp://0.0.0.0:12201`, "
        "`tls://0.0.0.0:12202` (needs `tls`). Port 0 picks a free port (logged).",
    )
    tls: ServerTls | None = Field(None, description="Certificate and key for `tls://` listeners.")
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=64 << 20,
        description="Largest message accepted, after decompression (larger ones are discarded and counted).",
    )
    chunk_timeout: float = Field(5.0, gt=0, description="Seconds a chunked message may take to arrive complete.")
    max_pending_messages: int = Field(
        4096, ge=16, description="Chunked messages being reassembled at once; past it the oldest is evicted."
    )
    max_pending_bytes: int = Field(
        64 << 20, ge=1 << 20, description="Bytes of chunks held for reassembly; past it the oldest set is evicted."
    )
    receive_buffer_bytes: int = Field(
        32 << 20,
        ge=0,
        description="UDP socket receive buffer (SO_RCVBUF), what absorbs bursts while the collector is busy. "
        "Above net.core.rmem_max it needs root (SO_RCVBUFFORCE); 0 keeps the system default.",
    )
    batch: DatagramBatch = Field(default_factory=DatagramBatch, description="How received messages are grouped.")
    dead_letter_per_second: int = Field(
        100, ge=0, description="Malformed messages written to the dead-letter file per second; more are only counted."
    )


class GelfSource(Source):
    config: GelfSourceConfig

    def __init__(self, name: str, config: GelfSourceConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.mapper = Mapper(config.tags, ctx.hostname)
        self.reassembler = Reassembler(
            config.chunk_timeout, config.max_pending_messages, config.max_pending_bytes, config.max_message_bytes
        )
        self.bound: list[str] = []  # the listening addresses, as URLs (ports resolved)
        t = ctx.telemetry
        self._received = t.received.labels(name)
        self._dropped_full = t.dropped.labels(name, "pipeline_full")
        self._dropped_kernel = t.dropped.labels(name, "receive_buffer_full")
        self._error = ctx.error_counter(name)
        self._udp = DatagramQueue(config.batch.max_events, config.batch.timeout, config.receive_buffer_bytes)
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._say = RateLimitedLog(log, prefix=f"{name}: ")  # one line per reason per minute
        self.table = ConnectionTable(name, config, self._error, self._say)
        self._dl_window = 0.0
        self._dl_left = 0
        self._drops_unlogged = {"pipeline_full": 0, "receive_buffer_full": 0}
        self._drops_logged_at = 0.0

    # -- counting -------------------------------------------------------------------------------
    def _bad(self, e: GelfError, data: bytes, peer: Any, transport: str) -> None:
        """A malformed message: dead-lettered with its peer (rate limited), always counted."""
        now = time.monotonic()
        if now >= self._dl_window:
            self._dl_window = now + 1.0
            self._dl_left = self.config.dead_letter_per_second
        if self._dl_left > 0:
            self._dl_left -= 1
            self.ctx.deadletter.raw(self.name, e.reason, data, peer=_peer(peer), transport=transport, detail=e.detail)
        else:
            self._error(e.reason)

    def _missing_host(self, peer: Any) -> None:
        """A message without ``host``: accepted under the sender's address, flagged, counted."""
        self._error("missing_host")
        self._say.warning(
            "missing_host",
            "GELF messages from %s have no `host`; host.name is set to the sender's address and "
            'log.flags to host_from_peer (all counted: collector_errors_total{reason="missing_host"})',
            _peer(peer),
        )

    def _drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        (self._dropped_full if reason == "pipeline_full" else self._dropped_kernel).inc(n)
        self._drops_unlogged[reason] += n

    def _log_drops(self, now: float) -> None:
        if now - self._drops_logged_at < DROP_LOG_INTERVAL or not any(self._drops_unlogged.values()):
            return
        full, kernel = self._drops_unlogged["pipeline_full"], self._drops_unlogged["receive_buffer_full"]
        log.warning(
            "%s: DROPPED %d UDP message(s) in the last %.0fs: %d with the pipeline full (UDP cannot push "
            "back: add capacity downstream or send over TCP), %d by the kernel with the receive buffer full "
            "(raise receive_buffer_bytes)",
            self.name,
            full + kernel,
            now - self._drops_logged_at if self._drops_logged_at else DROP_LOG_INTERVAL,
            full,
            kernel,
        )
        self._drops_unlogged = {"pipeline_full": 0, "receive_buffer_full": 0}
        self._drops_logged_at = now

    def _flush_chunk_counts(self) -> None:
        counts = self.reassembler.counts
        if not counts:
            return
        for reason, n in counts.items():
            self._error(reason, n)
            if reason != "duplicate_chunk":
                self._say.warning(reason, "chunked UDP messages discarded: %s (%d)", reason, n)
        counts.clear()

    # -- decoding -------------------------------------------------------------------------------
    def _to_batches(self, items: list[tuple[bytes, Any]], udp: bool, start: int = 0) -> tuple[list[Batch], int]:
        """Batches of the messages in ``items[start:]``, up to ``batch.max_bytes`` of them once
        decompressed; returns them and where to go on."""
        reasm = self.reassembler
        mapper = self.mapper
        limit = self.config.max_message_bytes
        now = time.monotonic()
        groups: dict[int, tuple[Fields, str, list[dict[str, Any]], list[int]]] = {}
        decoded = 0
        i = start
        max_bytes = self.config.batch.max_bytes
        while i < len(items) and decoded < max_bytes:
            data, peer = items[i]
            i += 1
            try:
                if udp and data[:2] == CHUNK_MAGIC:
                    payload = reasm.add(data, peer, now)
                    if payload is None:
                        continue
                else:
                    payload = data
                msg, size = decode_sized(payload, limit)
                decoded += size
                host = msg.get("host")
                if type(host) is not str or not host:  # GELF requires it; Fluent Bit may leave it out
                    self._missing_host(peer)
                meta, tag, ev = mapper(msg, _sender(peer))
            except GelfError as e:
                self._bad(e, payload, peer, "udp" if udp else "tcp")
                continue
            except Exception as e:  # a bug must not stop the server: set the message aside
                self._say.error("unexpected", "cannot map a GELF message (dead-lettered): %r", e)
                self._bad(GelfError("unexpected", repr(e)), payload, peer, "udp" if udp else "tcp")
                continue
            g = groups.get(id(meta))
            if g is None:
                g = groups[id(meta)] = (meta, tag, [], [0])
            g[2].append(ev)
            g[3][0] += size
        batches = []
        for meta, tag, events, size in groups.values():
            n = len(events)
            rnd = os.urandom(16 * n).hex()
            ids = [rnd[i : i + 32] for i in range(0, 32 * n, 32)]
            batches.append(Batch(events, meta, ids=ids, tag=tag, source=self.name, nbytes=size[0] + 64 * n))
        return batches, i

    # -- UDP -------------------------------------------------------------------------------------
    async def _udp_loop(self, out: Emitter) -> None:
        while (items := await self._udp.take()) is not None:
            i = 0
            while i < len(items):
                if not out.has_room():
                    # decoding what cannot be delivered would only slow the pipeline down further
                    self._drop(
                        "pipeline_full", sum(1 for d, _ in items[i:] if d[:2] != CHUNK_MAGIC or d[10:11] == b"\0")
                    )
                    break
                batches, i = self._to_batches(items, True, i)
                for b in batches:
                    if out.has_room():
                        self._received.inc(len(b))
                        await out.emit(b)
                    else:
                        self._drop("pipeline_full", len(b))
                await asyncio.sleep(0)  # batch.max_bytes at a time: the other sources and sinks get their turn

    # -- TCP -------------------------------------------------------------------------------------
    async def _serve_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str, tls: ssl.SSLContext | None
    ) -> None:
        peer = writer.get_extra_info("peername")
        conn = StreamConn(writer, peer_host(peer))
        if not self.table.admit(_peer(peer), conn.peer_host):
            writer.close()
            return
        self.table.add(conn)
        cap_reads(writer, TCP_READ_BYTES)
        self._conns.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        out = self._out
        splitter = FrameSplitter(self.config.max_message_bytes)
        table = self.table
        loop = asyncio.get_running_loop()
        try:
            if tls is not None and not await self._start_tls(writer, tls, peer):
                return
            while not conn.killed:
                data = await reader.read(TCP_READ_BYTES)
                t0 = loop.time()
                since, conn.message_since = conn.message_since, None
                frames = splitter.feed(data) if data else []
                if not data:
                    last = splitter.flush()
                    if last is not None:
                        frames.append(last)
                for head in splitter.take_oversize():
                    self._bad(
                        GelfError("too_large", f"frame longer than {splitter.max_bytes} bytes"), head, peer, transport
                    )
                items = [(f, peer) for f in frames]
                i = 0
                while i < len(items):
                    batches, i = self._to_batches(items, False, i)
                    for b in batches:
                        self._received.inc(len(b))
                        await out.emit(b)  # waits while the pipeline is full: TCP pushes back
                if not data or conn.killed:
                    break
                now = loop.time()
                if since is not None:  # our own time (decoding, waiting for room) does not count
                    conn.message_since = since + (now - t0)
                if not table.active(conn, now, splitter.buffered):
                    break
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("%s: %s connection from %s ended: %s", self.name, transport, _peer(peer), e)
        finally:
            splitter = None  # type: ignore[assignment]  # what it held goes now, not once the close is done
            table.discard(conn)
            self._conns.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _start_tls(self, writer: asyncio.StreamWriter, tls: ssl.SSLContext, peer: Any) -> bool:
        """The TLS handshake, here (not by the server) so that it counts against the limits
        and its failures are counted and said."""
        try:
            await writer.start_tls(tls, ssl_handshake_timeout=self.config.handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self._error("tls_failed")
            self._say.warning("tls_failed", "TLS handshake with %s failed: %s", _peer(peer), reason)
            writer.transport.abort()
            return False
        return True

    # -- lifecycle -------------------------------------------------------------------------------
    async def _open(self) -> None:
        for li in self.config.listens:
            scheme, host, port = li.scheme, li.host, li.port
            if scheme == "udp":
                u = self._udp.open(li)
                if u.rcvbuf < self.config.receive_buffer_bytes:
                    self._say.warning(
                        "rcvbuf",
                        "UDP receive buffer is %d bytes, not the %d asked for (net.core.rmem_max limits it "
                        "without CAP_NET_ADMIN): bursts may be dropped by the kernel (counted)",
                        u.rcvbuf,
                        self.config.receive_buffer_bytes,
                    )
                self.bound.append(u.url)
                continue
            tls = self.config.tls.context() if scheme == "tls" and self.config.tls else None

            async def handle(
                r: asyncio.StreamReader,
                w: asyncio.StreamWriter,
                scheme: str = scheme,
                tls: ssl.SSLContext | None = tls,
            ) -> None:
                await self._serve_tcp(r, w, scheme, tls)

            server = await asyncio.start_server(handle, host, port, limit=STREAM_LIMIT)
            self._servers.append(server)
            self.bound.append(f"{scheme}://{hostport(server.sockets[0].getsockname())}")
        log.info("%s: receiving GELF on %s", self.name, ", ".join(self.bound))
        self.mark_ready("listening on " + ", ".join(self.bound))

    def stop(self) -> None:
        super().stop()
        self._drop("receive_buffer_full", self._udp.kernel_drops())
        self._udp.close()
        for s in self._servers:
            s.close()
        for w in list(self._conns):
            w.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.monotonic()
            self.reassembler.expire(now)
            self._flush_chunk_counts()
            self._drop("receive_buffer_full", self._udp.kernel_drops())
            self._log_drops(now)

    async def run(self, out: Emitter) -> None:
        self._out = out
        try:
            await self._open()
        except OSError:
            self.stop()
            raise
        keeper = asyncio.create_task(self._housekeeping(), name=f"source:{self.name}:housekeeping")
        watch = None
        if self._servers:
            self.table.listening(len(self._servers))
            watch = asyncio.create_task(self.table.watch(), name=f"source:{self.name}:timeouts")
        try:
            await self._udp_loop(out)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
                self.table.stopped_listening()
            if not self.stopping:
                self.stop()
            await drain_handlers(self._handlers, TCP_DRAIN_SECONDS)
            for s in self._servers:
                with contextlib.suppress(Exception):
                    await s.wait_closed()
            self._flush_chunk_counts()
            self._drops_logged_at = 0.0
            self._log_drops(time.monotonic() + DROP_LOG_INTERVAL)


def _sender(peer: Any) -> str:
    """The sender's address without its port (ports change from message to message)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return hostport(peer)
    return str(peer)
