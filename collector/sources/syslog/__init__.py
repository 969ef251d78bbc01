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
``max_connections`` (lowered to fit the descriptor limit), ``max_connections_per_peer``, an
idle connection closed to make room when a cap is reached (``idle_timeout``), a frame started
must end within ``frame_timeout`` (slowloris), a TLS handshake within ``handshake_timeout``;
per connection, at most ``max_message_bytes`` plus one read (16 KiB) are held.  A message that
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

from pydantic import Field, field_validator, model_validator

from collector.codecs.syslog import Format, Framer, FramingError, SyslogError, parse
from collector.component import ComponentConfig, Emitter, ServerTls, Source
from collector.docker_api import DockerMetadata, DockerMetadataService
from collector.event import Batch
from collector.listeners import Listen, parse_listen
from collector.ratelog import RateLimitedLog
from collector.sources.syslog.mapping import Mapper, Resolutions
from collector.sources.syslog.net import (
    Conn,
    ConnectionTable,
    DatagramListener,
    connection_cap,
    hostport,
    peer_uid,
    remove_unix_socket,
    unix_socket,
)

log = logging.getLogger("collector.sources.syslog")

STREAM_READ_BYTES = 16 << 10
STREAM_DRAIN_SECONDS = 10.0
HOUSEKEEPING_INTERVAL = 1.0
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


class SyslogBatch(ComponentConfig):
    """How received messages are grouped (datagrams wait at most ``timeout`` for company)."""

    max_events: int = Field(2000, ge=1, le=100_000, description="Messages decoded and emitted together at most.")
    max_bytes: int = Field(4 << 20, ge=1024, description="Bytes of messages emitted together at most.")
    timeout: float = Field(
        0.005, ge=0, le=1, description="Seconds datagrams may wait to be batched with the next ones."
    )


class SyslogSourceConfig(ComponentConfig):
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
    max_connections: int = Field(
        1024, ge=1, description="Stream connections served at once (lowered to fit the descriptor limit)."
    )
    max_connections_per_peer: int = Field(
        256, ge=1, description="Stream connections from one address (one uid on a unix socket) at once."
    )
    idle_timeout: float = Field(
        60.0,
        gt=0,
        description="When a connection cap is reached, the connection idle for longest is closed to make room if "
        "it has been idle this many seconds; otherwise the new connection is refused. Idle connections are "
        "never closed while there is room (Docker's driver keeps one per container).",
    )
    frame_timeout: float = Field(
        30.0, gt=0, description="Seconds a message may take to arrive once its first byte came (slow senders)."
    )
    handshake_timeout: float = Field(10.0, gt=0, description="Seconds a TLS handshake may take.")
    receive_buffer_bytes: int = Field(
        8 << 20,
        ge=0,
        description="Datagram socket receive buffer (SO_RCVBUF), what absorbs bursts while the collector is busy; "
        "0 keeps the system default.",
    )
    socket_mode: str = Field(
        "0660", pattern=r"^0?[0-7]{3}$", description="Permissions of the unix socket files (octal)."
    )
    batch: SyslogBatch = Field(default_factory=SyslogBatch, description="How messages are grouped into batches.")
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

    @field_validator("listen", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("listen")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parse_listen(url)
        return v

    @model_validator(mode="after")
    def _tls(self) -> SyslogSourceConfig:
        if self.tls is None and any(parse_listen(u).scheme == "tls" for u in self.listen):
            raise ValueError("a tls:// listener needs `tls: {cert_file, key_file}`")
        return self


class SyslogSource(Source):
    config: SyslogSourceConfig

    def __init__(self, name: str, config: SyslogSourceConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.mapper = Mapper(config.tags, ctx.hostname)
        self.bound: list[str] = []  # the listening addresses, as URLs (ports resolved)
        t = ctx.telemetry
        self._received = t.received.labels(name)
        self._dropped_full = t.dropped.labels(name, "pipeline_full")
        self._dropped_kernel = t.dropped.labels(name, "receive_buffer_full")
        self._error = ctx.error_counter(name)
        self._warn = RateLimitedLog(log, prefix=f"{name}: ")  # one line per reason per minute
        self._dgram: list[DatagramListener] = []
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[tuple[str, socket.socket]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._pending: list[tuple[bytes, Any]] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._paused = False
        self._dl_window = 0.0
        self._dl_left = 0
        self._drops_unlogged = 0
        self._resolved = Resolutions(config.resolve_ttl)
        self._docker: DockerMetadata | None = None
        self.conns = ConnectionTable(
            connection_cap(config.max_connections), config.max_connections_per_peer, config.idle_timeout
        )
        if self.conns.cap < config.max_connections:
            log.warning(
                "%s: max_connections lowered from %d to %d to fit the descriptor limit (ulimit -n)",
                name,
                config.max_connections,
                self.conns.cap,
            )

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

    def _refuse(self, reason: str, peer: str) -> None:
        self._error(reason)
        self._warn(
            reason,
            "%s: %s",
            reason,
            f"refused a connection from {peer} (cap reached; see max_connections*, idle_timeout)",
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
                self._docker = await self.ctx.service(DockerMetadataService).pipeline_metadata()
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
    def _on_datagrams(self, n: int) -> None:
        cfg = self.config.batch
        if n >= cfg.max_events:
            self._full.set()
            if n >= 4 * cfg.max_events and not self._paused:
                self._paused = True  # decoding lags: let the kernel buffer hold the rest
                for u in self._dgram:
                    u.pause()
        self._wake.set()

    def _drop(self, n: int) -> None:
        if n > 0:
            self._dropped_full.inc(n)
            self._drops_unlogged += n

    async def _datagram_loop(self, out: Emitter) -> None:
        cfg = self.config.batch
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                if self.stopping:
                    return
                continue
            if len(self._pending) < cfg.max_events and not self.stopping and cfg.timeout:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cfg.timeout):
                        await self._full.wait()
            items, self._pending = self._pending, []
            self._wake.clear()
            if self._paused and not self.stopping:
                self._paused = False
                for u in self._dgram:
                    u.resume()
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
            uid = peer_uid(writer.get_extra_info("socket"))
            peer, key, sender = f"unix:{li.path} (uid {uid})", f"uid:{uid}", None
        else:
            addr = writer.get_extra_info("peername")
            peer, key, sender = hostport(addr), str(addr[0]), str(addr[0])
        conn = Conn(writer, peer, key)
        refused = "stopping" if self.stopping else self.conns.admit(conn)
        if refused is not None:
            if refused != "stopping":
                self._refuse(refused, peer)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        cfg = self.config
        framer = Framer(cfg.max_message_bytes)
        out = self._out
        started = 0.0
        try:
            while True:
                timeout = None
                if framer.pending:
                    timeout = max(0.0, started + cfg.frame_timeout - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(STREAM_READ_BYTES)
                except TimeoutError:
                    self._bad(
                        "frame_timeout",
                        f"a message took longer than frame_timeout ({cfg.frame_timeout}s); connection closed",
                        b"",
                        peer,
                        transport,
                    )
                    break
                conn.last = time.monotonic()
                try:
                    if data:
                        had = framer.pending
                        frames = framer.feed(data)
                        if framer.pending and (not had or frames):
                            started = conn.last  # a new frame began in this read
                    else:
                        last = framer.rest()
                        frames = [last] if last is not None else []
                except FramingError as e:
                    self._bad("bad_framing", f"{e}; connection closed", data[:1024], peer, transport)
                    break
                for head, size in framer.take_oversize():
                    self._bad(
                        "too_large",
                        f"{size} bytes > max_message_bytes ({cfg.max_message_bytes})",
                        head,
                        peer,
                        transport,
                    )
                if frames:  # one read holds at most STREAM_READ_BYTES of frames: within any batch limit
                    items = [(f, peer, sender, transport) for f in frames]
                    await self._emit(out, await self._to_batches(items), push_back=True)
                if not data:
                    break
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("%s: %s connection from %s ended: %s", self.name, transport, peer, e)
        finally:
            self.conns.discard(conn)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- lifecycle -------------------------------------------------------------------------------
    async def _open(self) -> None:
        cfg = self.config
        mode = int(cfg.socket_mode, 8)
        loop = asyncio.get_running_loop()
        for url in cfg.listen:
            li = parse_listen(url)
            if not li.stream:
                u = DatagramListener(li, self._pending_ref, self._on_datagrams, cfg.receive_buffer_bytes, mode)
                u.open(loop)
                if cfg.receive_buffer_bytes and u.rcvbuf < cfg.receive_buffer_bytes:
                    log.warning(
                        "%s: the receive buffer of %s is %d bytes, not the %d asked for (net.core.rmem_max limits it "
                        "without CAP_NET_ADMIN): bursts may be dropped by the kernel",
                        self.name,
                        u.url,
                        u.rcvbuf,
                        cfg.receive_buffer_bytes,
                    )
                self._dgram.append(u)
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
        log.info("%s: receiving syslog on %s", self.name, ", ".join(self.bound))
        self.mark_ready("listening on " + ", ".join(self.bound))

    def _pending_ref(self) -> list[tuple[bytes, Any]]:
        return self._pending

    def stop(self) -> None:
        super().stop()
        self._kernel_drops()
        for u in self._dgram:
            u.close()
        for s in self._servers:
            s.close()
        for c in list(self.conns.conns):
            c.writer.close()
        self._wake.set()

    def _kernel_drops(self) -> None:
        n = sum(u.kernel_drops() for u in self._dgram)
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
        try:
            await self._datagram_loop(out)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not self.stopping:
                self.stop()
            if self._handlers:  # connections end with their writers closed; one waiting for room delivers first
                _, late = await asyncio.wait(self._handlers, timeout=STREAM_DRAIN_SECONDS)
                for t in late:
                    t.cancel()
            for s in self._servers:
                with contextlib.suppress(Exception):
                    await s.wait_closed()
            self._cleanup_paths()

    def _cleanup_paths(self) -> None:
        for path, sock in self._unix_paths:
            remove_unix_socket(path, sock)
        self._unix_paths.clear()
