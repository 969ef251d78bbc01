"""Source ``fluent_forward``: the Fluentd forward protocol (Docker's ``fluentd`` log driver,
Fluent Bit, Fluentd, fluent-logger clients).

    sources:
      forward: {type: fluent_forward, listen: [tcp://127.0.0.1:24224]}

* Forward Protocol v1 in full: Message, Forward, PackedForward and CompressedPackedForward
  modes, EventTime and integer/float times, many connections, messages split anywhere
  across reads (codecs/forward/);
* ``chunk``: ``{"ack": chunk}`` is answered only once every record of the message is
  finalized downstream (delivered, or stored by a disk buffer), which is what makes Fluent Bit
  and fluent-logger clients at-least-once; record ids derive from the chunk and the record's
  index, so a resent chunk writes the same ``_id`` again (one exception: the parts of a line
  Docker split are acknowledged as they arrive, see records.py);
* ``shared_key`` (HELO/PING/PONG, with optional ``users``); a client that fails
  authentication gets a PONG with the reason and is disconnected;
* ``listen``: a list of URLs, several servers per source: ``tcp://host:port``,
  ``tls://host:port`` (with ``tls``), ``unix:///path`` (Docker's ``fluentd-address=unix://...``);
  each TCP port (tcp:// and tls://) answers UDP heartbeats on the same port (one 0x00 byte);
* ``batch``: what is already readable is read into one batch, up to ``max_events`` records,
  ``max_bytes`` of messages, and for at most ``timeout`` seconds (it never waits for input that
  is not there yet, so a chunk's ack is never held back longer than that for batching);
* the limits every listener states (collector/listeners.py): connections in all and per
  address, handshake, read and idle timeouts, bytes held for messages still arriving; and
  a decoder that builds nothing before a message is whole (codecs/forward/framer.py).

Records, split lines and bad entries: records.py; their fields: mapping.py.  Batches, shared
fields and acks: intake.py.  Connections, the handshakes, backpressure and bad input:
connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from collector.component import ComponentConfig, Context, Emitter, ServerTls, Source
from collector.listeners import ConnectionTable, Listen, ListenerConfig, cap_reads, peer_host
from collector.sources.fluent_forward.connection import Connection, peer_name, set_nodelay
from collector.sources.fluent_forward.intake import Intake

log = logging.getLogger("collector.sources.fluent_forward")

STREAM_LIMIT = 32 << 10
SCHEMES = ("tcp", "tls", "unix")  # listen URLs served


class ForwardUser(ComponentConfig):
    username: str = Field(min_length=1, description="User name a client gives in its PING.")
    password: SecretStr = Field(
        min_length=1, description="That user's password (`${ENV_VAR}` keeps it out of the file)."
    )


class ForwardBatch(ComponentConfig):
    """How records already received are grouped: what is readable is read into one batch, within
    these bounds (nothing waits for input that has not arrived)."""

    max_events: int = Field(4096, ge=1, description="Records per batch at most.")
    max_bytes: int = Field(
        4 << 20,
        ge=1024,
        description="A batch is emitted once its records reach this many bytes (their text plus 64 each; "
        "the last record may take it past).",
    )
    timeout: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Seconds a batch may keep reading what is already readable before it is emitted "
        "(0: one read at a time). Chunk acks wait for the batch, so at most this long for batching.",
    )


class FluentForwardConfig(ListenerConfig):
    listen_schemes: ClassVar[tuple[str, ...]] = SCHEMES
    type: Literal["fluent_forward"]
    listen: list[str] = Field(
        default_factory=lambda: ["tcp://127.0.0.1:24224"],
        min_length=1,
        description="Addresses to receive the forward protocol on: `tcp://127.0.0.1:24224`, "
        "`tls://0.0.0.0:24284` (needs `tls`), `unix:///run/collector/forward.sock`. Each TCP port also answers "
        "UDP heartbeats (see heartbeat). The default accepts local clients only; `tcp://0.0.0.0:24224` "
        "accepts others. Port 0 picks a free port (logged).",
    )
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    shared_key: SecretStr | None = Field(
        None, min_length=1, description="Require the HELO/PING/PONG handshake with this shared key."
    )
    self_hostname: str | None = Field(None, description="Our hostname in PONG answers (default: this host's name).")
    users: list[ForwardUser] = Field(
        default_factory=list, description="Also require one of these username/password pairs (needs shared_key)."
    )
    tls: ServerTls | None = Field(None, description="Certificate and key for `tls://` listeners.")
    heartbeat: bool = Field(True, description="Answer UDP heartbeats on the port of each tcp:// and tls:// listener.")
    max_message_bytes: int = Field(
        16 << 20,
        ge=1 << 16,
        description="Largest message accepted (also each connection's buffer); a larger one closes the connection.",
    )
    max_decompressed_bytes: int = Field(
        64 << 20, ge=1 << 16, description="Largest CompressedPackedForward payload once decompressed."
    )
    max_record_bytes: int = Field(
        1 << 20, ge=1024, description="A message (or rejoined split line) longer than this is truncated and flagged."
    )
    batch: ForwardBatch = Field(default_factory=ForwardBatch, description="How received records are grouped.")
    read_bytes: int = Field(
        128 << 10,
        ge=4096,
        description="Bytes read from a socket at a time (a connection buffers this plus 64 KiB at most).",
    )
    partial_timeout: float = Field(
        5.0, gt=0, description="Seconds a split line waits for its next part before it is emitted incomplete."
    )

    @model_validator(mode="after")
    def _auth(self) -> FluentForwardConfig:
        if self.tls is not None and not any(li.scheme == "tls" for li in self.listens):
            raise ValueError("tls is set but no listener is tls://: listen on tls://HOST:PORT")
        if self.users and self.shared_key is None:
            raise ValueError("users need shared_key (user authentication is part of the shared-key handshake)")
        return self


class FluentForwardSource(Source):
    config: FluentForwardConfig

    def __init__(self, name: str, config: FluentForwardConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.intake = Intake(name, config, ctx)
        self.connections: set[Connection] = set()
        self.addresses: list[tuple[str, int] | str] = []  # what we listen on (ports resolved), once listening
        self.bound: list[str] = []  # the same, as URLs
        self.listening = asyncio.Event()
        self._out: Emitter | None = None
        self._sslctx: ssl.SSLContext | None = None
        self.table = ConnectionTable(name, config, self.intake.error, self.intake.say)

    # -- setup ----------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext | None:
        return self.config.tls.context() if self.config.tls is not None else None

    @property
    def address(self) -> tuple[str, int] | str | None:
        """The first listener's address once listening: ``(host, port)`` or a socket's path."""
        return self.addresses[0] if self.addresses else None

    async def _serve(self, li: Listen) -> asyncio.Server:
        cfg = self.config
        # the handshake is per connection (connection.py): failures are counted
        tls = self._sslctx if li.scheme == "tls" else None

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(reader, writer, tls)

        # a stream pauses its socket past twice its limit: what a fast client costs is bounded by
        # that and one read (cap_reads), while reads of read_bytes keep batches large
        kw: dict[str, Any] = {"limit": min(STREAM_LIMIT, cfg.read_bytes)}
        if li.scheme == "unix":
            _remove_stale_socket(li.path)
            server = await asyncio.start_unix_server(accept, li.path, **kw)
            self.addresses.append(li.path)
            self.bound.append(f"unix://{li.path}")
            return server
        server = await asyncio.start_server(accept, li.host, li.port, reuse_address=True, **kw)
        sock = server.sockets[0].getsockname()
        self.addresses.append((sock[0], sock[1]))
        host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self.bound.append(f"{li.scheme}://{host}:{sock[1]}")
        return server

    async def _heartbeat(self, address: tuple[str, int]) -> asyncio.DatagramTransport | None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(Heartbeat, local_addr=address)
        except OSError as e:
            log.warning("%s: no UDP heartbeat on %s:%d: %s", self.name, *address, e)
            return None
        return transport

    # -- connections ----------------------------------------------------------------------------
    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext | None
    ) -> None:
        peer = peer_name(writer)
        if self._out is None or self.stopping:
            writer.close()
            return
        host = peer_host(writer.get_extra_info("peername"))
        if not self.table.admit(peer, host):
            writer.close()
            return
        set_nodelay(writer)
        cap_reads(writer, self.config.read_bytes)
        conn = Connection(self.intake, reader, writer, peer, self.table)
        conn.on_close = self._closed  # (it may outlive serve(): acks still owed)
        self.connections.add(conn)
        self.table.add(conn)
        await conn.serve(self._out, tls)

    def _closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.table.discard(conn)

    # -- running --------------------------------------------------------------------------------
    async def run(self, out: Emitter) -> None:
        if self.ctx.once:
            log.info("%s: a listener has nothing to read with --once; not listening", self.name)
            self.mark_ready("not listening (--once)")
            return
        self._out = out
        self._sslctx = self._tls()
        servers: list[asyncio.Server] = []
        udps: list[asyncio.DatagramTransport] = []
        try:
            for li in self.config.listens:
                servers.append(await self._serve(li))
                address = self.addresses[-1]
                if self.config.heartbeat and isinstance(address, tuple):
                    udp = await self._heartbeat(address)
                    if udp is not None:
                        udps.append(udp)
        except BaseException:
            for srv in servers:
                srv.close()
            for udp in udps:
                udp.close()
            raise
        log.info(
            "%s: listening for the forward protocol on %s%s",
            self.name,
            ", ".join(self.bound),
            " (shared key)" if self.config.shared_key else "",
        )
        self.ctx._closers.append(self._close_all)
        self.listening.set()
        self.mark_ready("listening on " + ", ".join(self.bound))
        self.table.listening(len(servers))
        watch = asyncio.create_task(self.table.watch(), name=f"source:{self.name}:timeouts")
        try:
            await self._stop.wait()
        finally:
            watch.cancel()
            for srv in servers:
                srv.close()
            self.table.stopped_listening()
            for udp in udps:
                udp.close()
            conns = list(self.connections)
            me = asyncio.current_task()
            forced = me is not None and me.cancelling() > 0  # a second signal: no draining
            for c in conns:
                if forced:
                    c.abort()
                else:
                    c.stop()
            tasks = [c.task for c in conns if c.task is not None and not c.task.done()]
            if tasks:
                try:
                    await asyncio.gather(*tasks, return_exceptions=True)
                except asyncio.CancelledError:
                    for c in conns:
                        c.abort()
                    raise
            for li in self.config.listens:
                if li.scheme == "unix":
                    with contextlib.suppress(OSError):
                        os.unlink(li.path)

    async def _close_all(self) -> None:
        for c in list(self.connections):
            c.close()
        self.connections.clear()


class Heartbeat(asyncio.DatagramProtocol):
    """Answers each UDP heartbeat datagram with one 0x00 byte (as Fluentd's in_forward does)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(OSError):
            self.transport.sendto(b"\0", addr)


def _remove_stale_socket(path: str) -> None:
    """Remove a Unix socket left by a previous run; refuse to steal one that is in use."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        s.close()
    raise OSError(f"{path} is in use by another process")


__all__ = ["FluentForwardConfig", "FluentForwardSource", "ForwardUser"]
