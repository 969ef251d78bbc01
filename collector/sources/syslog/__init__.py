"""Source ``syslog``: RFC 5424 and RFC 3164 over UDP, TCP, TLS and unix sockets.

What Docker's ``--log-driver=syslog`` sends (every ``syslog-format``: the default, ``rfc3164``,
``rfc5424``, ``rfc5424micro``; over ``udp``, ``tcp``, ``tcp+tls``, ``unix``, ``unixgram``),
util-linux ``logger``, rsyslog's ``omfwd``, syslog-ng, network devices ...

    sources:
      syslog:
        type: syslog
        listen: [udp://0.0.0.0:514, tcp://0.0.0.0:514, tls://0.0.0.0:6514, unix:///run/collector/syslog.sock]
        tls: {cert_file: /etc/collector/cert.pem, key_file: /etc/collector/key.pem}

Reading (collector/codecs/syslog.py): ``format: auto`` tells RFC 5424 from RFC 3164 per message;
streams are split per frame by octet counting (RFC 6587, RFC 5425) or by newline.  Records:
mapping.py (``log.syslog.*``, ``host.name``, ``tags``; ``container.id`` when the tag names a
container, which docker_metadata then enriches).

Datagrams are batched like GELF's (``batch.max_events`` or ``batch.timeout``); UDP cannot push
back, so when the pipeline has no room they are dropped and counted
(``collector_events_dropped_total{reason="pipeline_full"}``), and so are the ones the kernel
dropped with the socket's receive buffer full (``reason="receive_buffer_full"``, from
/proc/net/udp).  Streams push back: a full pipeline stops the reading.  Syslog has no
acknowledgement: record ids are random.

Limits: ``max_message_bytes`` (a longer message is dead-lettered: its head, with the peer);
the stream listeners' own, the same as the forward and GELF sources' (collector/listeners.py:
``max_connections`` fitted to the descriptor limit, ``max_connections_per_peer`` (the uid for a
unix socket), an idle connection closed to make room when a cap is reached (``idle_timeout``), a
message started must end within ``read_timeout`` (slowloris), a TLS handshake within
``handshake_timeout``, ``max_buffered_bytes`` for messages still arriving); per connection, at
most ``max_message_bytes`` plus one read (16 KiB) are held.  A message that
cannot be read is dead-lettered with its peer and reason (at most ``dead_letter_per_second``,
the rest counted), counted in ``collector_errors_total{component,reason}`` and logged once per
reason per minute, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from collector.codecs.syslog import Format, Framer, FramingError, SyslogError, parse
from collector.component import Context, Emitter, ServerTls, Source
from collector.datagrams import DatagramBatch, DatagramQueue, hostport, remove_unix_socket, unix_socket
from collector.event import Batch
from collector.listeners import ConnectionTable, Listen, ListenerConfig, StreamConn, drain_handlers, unix_peer_uid
from collector.ratelog import RateLimitedLog
from collector.sources.syslog.mapping import Mapper, Resolutions

log = logging.getLogger("collector.sources.syslog")

STREAM_READ_BYTES = 16 << 10
STREAM_DRAIN_SECONDS = 10.0
HOUSEKEEPING_INTERVAL = 1.0
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


class SyslogSourceConfig(ListenerConfig):
    type: Literal["syslog"]
    listen: list[str] = Field(
        min_length=1,
        description="Addresses to receive syslog on: `udp://0.0.0.0:514`, `tcp://0.0.0.0:514`, "
        "`tls://0.0.0.0:6514` (needs `tls`), `unix:///run/collector/syslog.sock` (stream), "
        "`unixgram:///run/collector/dev-log` (datagram). Port 0 picks a free port (logged).",
    )
    format: Format = Field(
        "auto", description="`rfc5424`, `rfc3164`, or `auto`: told apart per message by the version after <PRI>."
    )
    tls: ServerTls | None = Field(None, description="Certificate and key for `tls://` listeners (RFC 5425).")
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    max_message_bytes: int = Field(
        64 << 10,
        ge=480,
        le=16 << 20,
        description="Largest message accepted (a frame, a datagram); a longer one is dead-lettered (its head).",
    )
    receive_buffer_bytes: int = Field(
        8 << 20,
        ge=0,
        description="Datagram socket receive buffer (SO_RCVBUF), what absorbs bursts while the collector is busy; "
        "0 keeps the system default.",
    )
    socket_mode: str = Field(
        "0660", pattern=r"^0?[0-7]{3}$", description="Permissions of the unix socket files (octal)."
    )
    batch: DatagramBatch = Field(default_factory=DatagramBatch, description="How messages are grouped into batches.")
    dead_letter_per_second: int = Field(
        100, ge=0, description="Malformed messages written to the dead-letter file per second; more are only counted."
    )
    resolve_containers: bool = Field(
        True,
        description="Look up the tag (APP-NAME) as a container id or name (Docker's syslog driver sends its tag "
        "there, by default the 12-character id) and set container.id when it is one. The lookup uses the "
        "pipeline's Docker metadata (the pipeline's docker_root; the docker_metadata transform's docker_host and "
        "metadata, without that transform $DOCKER_HOST or the local socket): ids and names through "
        "the API, full ids and id prefixes through config.v2.json files.",
    )
    resolve_ttl: float = Field(30.0, gt=0, description="Seconds a tag's lookup (found or not) is remembered.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "frame_timeout" in data:  # its name before the listeners shared one
            data = dict(data)
            value = data.pop("frame_timeout")
            if "read_timeout" in data:
                raise ValueError("`frame_timeout` is the old name of `read_timeout`: give only `read_timeout`")
            log.warning("syslog: `frame_timeout` is now `read_timeout` (as on the other listeners); using it as that")
            data["read_timeout"] = value
        return data


class SyslogSource(Source):
    config: SyslogSourceConfig

    def __init__(self, name: str, config: SyslogSourceConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.mapper = Mapper(config.tags, ctx.hostname)
        self.bound: list[str] = []  # the listening addresses, as URLs (ports resolved)
        t = ctx.telemetry
        self._received = t.received.labels(name)
        self._dropped_full = t.dropped.labels(name, "pipeline_full")
        self._dropped_kernel = t.dropped.labels(name, "receive_buffer_full")
        self._error = ctx.error_counter(name)
        self._warn = RateLimitedLog(log, prefix=f"{name}: ")  # one line per reason per minute
        self._dgram = DatagramQueue(
            config.batch.max_events, config.batch.timeout, config.receive_buffer_bytes, int(config.socket_mode, 8)
        )
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[tuple[str, socket.socket]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._dl_window = 0.0
        self._dl_left = 0
        self._drops_unlogged = 0
        self._resolved = Resolutions(config.resolve_ttl)
        self._docker: Any = None
        self.conns = ConnectionTable(name, config, self._error, self._warn)

    # -- counting -------------------------------------------------------------------------------
    def _bad(self, reason: str, detail: str, data: bytes, peer: str, transport: str) -> None:
        """Input that cannot be read: dead-lettered with its peer (rate limited), counted, logged."""
        now = time.monotonic()
        if now >= self._dl_window:
            self._dl_window = now + 1.0
            self._dl_left = self.config.dead_letter_per_second
        if self._dl_left > 0:
            self._dl_left -= 1
            self.ctx.deadletter.raw(self.name, reason, data, peer=peer, transport=transport, detail=detail)
        else:
            self._error(reason)
        self._warn(
            reason, "%s: %s", reason, f"from {peer} ({transport}): {detail[:200]}; set aside in the dead-letter file"
        )

    # -- decoding -------------------------------------------------------------------------------
    async def _to_batches(self, items: list[tuple[bytes, str, str | None, str]]) -> list[Batch]:
        """(data, peer for messages, sender address or None for a local socket, transport) -> batches."""
        fmt = self.config.format
        now = time.time()
        received = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        groups: dict[tuple[str, str | None], tuple[list[dict[str, Any]], list[int]]] = {}
        limit = self.config.max_message_bytes
        for data, peer, sender, transport in items:
            if len(data) > limit:
                self._bad("too_large", f"{len(data)} bytes > max_message_bytes ({limit})", data[:1024], peer, transport)
                continue
            try:
                m = parse(data, fmt, now)
            except SyslogError as e:
                self._bad(e.reason, e.detail, data, peer, transport)
                continue
            except Exception as e:  # a bug must not stop the server: set the message aside
                self._bad("unexpected", repr(e), data, peer, transport)
                continue
            host = m.hostname
            flagged = False
            if not host:
                if sender is None or sender in LOOPBACK:
                    host = self.ctx.hostname
                else:
                    host, flagged = sender, True
            ev = Mapper.event(m, received, flagged, container=False)
            g = groups.get((host, m.appname))
            if g is None:
                g = groups[(host, m.appname)] = ([], [0])
            g[0].append(ev)
            g[1][0] += len(data)
        batches = []
        for (host, app), (events, size) in groups.items():
            cid = await self._container_of(app) if app else None
            meta, tag = self.mapper.shared(host, app, cid)
            if cid:
                for ev in events:
                    code = ev["log"]["syslog"]["severity"]["code"]
                    if code in (3, 6):  # Docker's driver: Err for stderr, Info for stdout
                        ev["stream"] = "stderr" if code == 3 else "stdout"
            n = len(events)
            rnd = os.urandom(16 * n).hex()
            ids = [rnd[i : i + 32] for i in range(0, 32 * n, 32)]
            batches.append(Batch(events, meta, ids=ids, tag=tag, source=self.name, nbytes=size[0] + 64 * n))
        return batches

    async def _container_of(self, tag: str) -> str | None:
        if not self.config.resolve_containers:
            return None
        known, cid = self._resolved.get(tag)
        if known:
            return cid
        cid = None
        try:
            if self._docker is None:
                self._docker = await self.ctx.pipeline_docker()
            info = await self._docker.resolve(tag)
            cid = info.id if info is not None else None
        except Exception as e:  # metadata trouble must not stop the server
            self._warn(
                "container_lookup_failed", "%s: %s", "container_lookup_failed", f"looking up tag {tag[:60]!r}: {e!r}"
            )
        self._resolved.put(tag, cid)
        return cid

    async def _emit(self, out: Emitter, batches: list[Batch], push_back: bool) -> None:
        for b in batches:
            if push_back or out.has_room():
                self._received.inc(len(b))
                await out.emit(b)  # streams wait while the pipeline is full: the senders slow down
            else:
                self._drop(len(b))

    # -- datagrams ------------------------------------------------------------------------------
    def _drop(self, n: int) -> None:
        if n > 0:
            self._dropped_full.inc(n)
            self._drops_unlogged += n

    async def _datagram_loop(self, out: Emitter) -> None:
        cfg = self.config.batch
        while (items := await self._dgram.take()) is not None:
            if not out.has_room():
                self._drop(len(items))  # decoding what cannot be delivered would only slow things down
                continue
            decoded = []
            for data, addr in items:
                if isinstance(addr, tuple):
                    decoded.append((data, hostport(addr), str(addr[0]), "udp"))
                else:
                    decoded.append((data, f"unix:{addr}", None, "unixgram"))
            chunk: list[tuple[bytes, str, str | None, str]] = []
            size = 0
            for item in decoded:  # batches of at most max_events messages and max_bytes bytes
                chunk.append(item)
                size += len(item[0])
                if len(chunk) >= cfg.max_events or size >= cfg.max_bytes:
                    await self._emit(out, await self._to_batches(chunk), push_back=False)
                    chunk, size = [], 0
            if chunk:
                await self._emit(out, await self._to_batches(chunk), push_back=False)

    # -- streams --------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, li: Listen) -> None:
        transport = li.scheme
        if li.scheme == "unix":
            uid = unix_peer_uid(writer.get_extra_info("socket"))
            peer, key, sender = f"unix:{li.path} (uid {uid})", f"uid:{uid}", None
        else:
            addr = writer.get_extra_info("peername")
            peer, key, sender = hostport(addr), str(addr[0]), str(addr[0])
        conn = StreamConn(writer, key)
        if self.stopping or not self.conns.admit(peer, key):
            writer.transport.abort()
            return
        self.conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        framer = Framer(self.config.max_message_bytes)
        table = self.conns
        out = self._out
        loop = asyncio.get_running_loop()
        try:
            while not conn.killed:
                data = await reader.read(STREAM_READ_BYTES)
                if conn.killed:  # read_timeout, a full table, the memory budget: what it held is not a message
                    break
                t0 = loop.time()
                since, conn.message_since = conn.message_since, None
                try:
                    if data:
                        frames = framer.feed(data)
                    else:
                        last = framer.rest()
                        frames = [last] if last is not None else []
                except FramingError as e:
                    self._bad("bad_framing", f"{e}; connection closed", data[:1024], peer, transport)
                    break
                for head, size in framer.take_oversize():
                    self._bad(
                        "too_large",
                        f"{size} bytes > max_message_bytes ({self.config.max_message_bytes})",
                        head,
                        peer,
                        transport,
                    )
                if frames:  # one read holds at most STREAM_READ_BYTES of frames: within any batch limit
                    items = [(f, peer, sender, transport) for f in frames]
                    await self._emit(out, await self._to_batches(items), push_back=True)
                if not data or conn.killed:
                    break
                now = loop.time()
                if since is not None and framer.pending and not frames:  # the same message goes on arriving;
                    conn.message_since = since + (now - t0)  # our own time (waiting for room) does not count
                if not table.active(conn, now, framer.pending):
                    break
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("%s: %s connection from %s ended: %s", self.name, transport, peer, e)
        finally:
            table.discard(conn)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- lifecycle -------------------------------------------------------------------------------
    async def _open(self) -> None:
        cfg = self.config
        mode = int(cfg.socket_mode, 8)
        for li in cfg.listens:
            if not li.stream:
                u = self._dgram.open(li)
                if cfg.receive_buffer_bytes and u.rcvbuf < cfg.receive_buffer_bytes:
                    log.warning(
                        "%s: the receive buffer of %s is %d bytes, not the %d asked for (net.core.rmem_max limits it "
                        "without CAP_NET_ADMIN): bursts may be dropped by the kernel",
                        self.name,
                        u.url,
                        u.rcvbuf,
                        cfg.receive_buffer_bytes,
                    )
                self.bound.append(u.url)
                continue

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, li: Listen = li) -> None:
                await self._serve(r, w, li)

            if li.scheme == "unix":
                sock = unix_socket(li.path, socket.SOCK_STREAM, mode)
                self._unix_paths.append((li.path, sock))
                server = await asyncio.start_unix_server(handle, sock=sock, limit=STREAM_READ_BYTES)
                self.bound.append(f"unix://{li.path}")
            else:
                tls = cfg.tls.context() if li.scheme == "tls" and cfg.tls else None
                server = await asyncio.start_server(
                    handle,
                    li.host,
                    li.port,
                    ssl=tls,
                    ssl_handshake_timeout=cfg.handshake_timeout if tls else None,
                    limit=STREAM_READ_BYTES,
                )
                self.bound.append(f"{li.scheme}://{hostport(server.sockets[0].getsockname())}")
            self._servers.append(server)
        self.conns.listening(len(self._servers))
        log.info("%s: receiving syslog on %s", self.name, ", ".join(self.bound))
        self.mark_ready("listening on " + ", ".join(self.bound))

    def stop(self) -> None:
        super().stop()
        self._kernel_drops()
        self._dgram.close()
        for s in self._servers:
            s.close()
        for c in list(self.conns.conns):
            c.writer.close()  # type: ignore[attr-defined]  # (StreamConn)

    def _kernel_drops(self) -> None:
        n = self._dgram.kernel_drops()
        if n:
            self._dropped_kernel.inc(n)
            self._warn(
                "receive_buffer_full",
                "%s: %s",
                "receive_buffer_full",
                f"DROPPED {n} UDP datagram(s): the kernel's receive buffer was full (raise receive_buffer_bytes; "
                "the collector could not keep up with the burst)",
            )

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            self._kernel_drops()
            if self._drops_unlogged:
                self._warn(
                    "pipeline_full",
                    "%s: %s",
                    "pipeline_full",
                    f"DROPPED {self._drops_unlogged} datagram(s): the pipeline was full (datagrams cannot push back: "
                    "add capacity downstream or send over TCP)",
                )
                self._drops_unlogged = 0

    async def run(self, out: Emitter) -> None:
        self._out = out
        try:
            await self._open()
        except OSError:
            self.stop()
            self._cleanup_paths()
            raise
        keeper = asyncio.create_task(self._housekeeping(), name=f"source:{self.name}:housekeeping")
        watch = asyncio.create_task(self.conns.watch(), name=f"source:{self.name}:timeouts")
        try:
            await self._datagram_loop(out)
        finally:
            for t in (keeper, watch):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self.conns.stopped_listening()
            if not self.stopping:
                self.stop()
            await drain_handlers(self._handlers, STREAM_DRAIN_SECONDS)
            for s in self._servers:
                with contextlib.suppress(Exception):
                    await s.wait_closed()
            self._cleanup_paths()

    def _cleanup_paths(self) -> None:
        for path, sock in self._unix_paths:
            remove_unix_socket(path, sock)
        self._unix_paths.clear()
