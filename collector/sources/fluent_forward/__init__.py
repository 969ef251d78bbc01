"""Source ``fluent_forward``: the Fluentd forward protocol (Docker's ``fluentd`` log driver,
Fluent Bit, Fluentd, fluent-logger clients).

    sources:
      forward: {type: fluent_forward, listen: "127.0.0.1:24224"}

* Forward Protocol v1 in full: Message, Forward, PackedForward and CompressedPackedForward
  modes, EventTime and integer/float times, many connections, messages split anywhere
  across reads (codecs/forward.py);
* ``chunk``: ``{"ack": chunk}`` is answered only once every record of the message is
  finalized downstream (delivered, or stored by a disk buffer), which is what makes Fluent Bit
  and fluent-logger clients at-least-once; record ids derive from the chunk and the record's
  index, so a resent chunk writes the same ``_id`` again (one exception: the parts of a line
  Docker split are acknowledged as they arrive, see records.py);
* ``shared_key`` (HELO/PING/PONG, with optional ``users``) and ``tls``; a client that fails
  authentication gets a PONG with the reason and is disconnected;
* a UDP heartbeat on the same port (answered with one 0x00 byte);
* ``listen: unix:///path`` for a Unix socket (Docker's ``fluentd-address=unix://...``);
* the limits every listener states (collector/listeners.py): connections in all and per
  address, handshake, read and idle timeouts, bytes held for messages still arriving; and
  a decoder that builds nothing before a message is whole (codecs/forward.py).

Records and split lines: records.py.  Batches, shared fields and acks: intake.py.  Connections,
the handshakes, backpressure and bad input: connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from collector.component import ComponentConfig, Context, Emitter, ServerTls, Source, split_hostport
from collector.listeners import ConnectionTable, ListenerLimits, cap_reads, peer_host
from collector.sources.fluent_forward.connection import Connection, peer_name, set_nodelay
from collector.sources.fluent_forward.intake import Intake

log = logging.getLogger("collector.sources.fluent_forward")

STREAM_LIMIT = 32 << 10


class ForwardUser(ComponentConfig):
    username: str = Field(min_length=1, description="User name a client gives in its PING.")
    password: SecretStr = Field(
        min_length=1, description="That user's password (`${ENV_VAR}` keeps it out of the file)."
    )


class FluentForwardConfig(ListenerLimits):
    type: Literal["fluent_forward"]
    listen: str = Field(
        "127.0.0.1:24224",
        description="host:port to listen on (TCP, plus the UDP heartbeat), or unix:///path. "
        "The default accepts local clients only; use 0.0.0.0:24224 to accept others.",
    )
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    shared_key: SecretStr | None = Field(
        None, min_length=1, description="Require the HELO/PING/PONG handshake with this shared key."
    )
    self_hostname: str | None = Field(None, description="Our hostname in PONG answers (default: this host's name).")
    users: list[ForwardUser] = Field(
        default_factory=list, description="Also require one of these username/password pairs (needs shared_key)."
    )
    tls: ServerTls | None = Field(None, description="Serve TLS with this certificate (off when absent).")
    heartbeat: bool = Field(True, description="Answer UDP heartbeats on the same port.")
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
    max_batch_events: int = Field(4096, ge=1, description="Records per batch at most.")
    read_bytes: int = Field(
        128 << 10,
        ge=4096,
        description="Bytes read from a socket at a time (a connection buffers this plus 64 KiB at most).",
    )
    partial_timeout: float = Field(
        5.0, gt=0, description="Seconds a split line waits for its next part before it is emitted incomplete."
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix://"):
            if not v[7:]:
                raise ValueError("unix:// needs a path, e.g. unix:///run/collector/forward.sock")
            return v
        split_hostport(v)
        return v

    @model_validator(mode="after")
    def _auth(self) -> FluentForwardConfig:
        if self.users and self.shared_key is None:
            raise ValueError("users need shared_key (user authentication is part of the shared-key handshake)")
        return self


class FluentForwardSource(Source):
    config: FluentForwardConfig

    def __init__(self, name: str, config: FluentForwardConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.intake = Intake(name, config, ctx)
        self.connections: set[Connection] = set()
        self.address: tuple[str, int] | str | None = None  # what we listen on, once listening
        self.listening = asyncio.Event()
        self._out: Emitter | None = None
        self._sslctx: ssl.SSLContext | None = None
        self.table = ConnectionTable(name, config, self.intake.error, self.intake.say)

    # -- setup ----------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext | None:
        return self.config.tls.context() if self.config.tls is not None else None

    async def _serve(self) -> asyncio.Server:
        cfg = self.config
        self._sslctx = self._tls()  # the handshake is per connection (connection.py): failures are counted
        # a stream pauses its socket past twice its limit: what a fast client costs is bounded by
        # that and one read (cap_reads), while reads of read_bytes keep batches large
        kw: dict[str, Any] = {"limit": min(STREAM_LIMIT, cfg.read_bytes)}
        if cfg.listen.startswith("unix://"):
            path = cfg.listen[7:]
            _remove_stale_socket(path)
            server = await asyncio.start_unix_server(self._accept, path, **kw)
            self.address = path
            return server
        host, port = split_hostport(cfg.listen)
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True, **kw)
        sock = server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        return server

    async def _heartbeat(self) -> asyncio.DatagramTransport | None:
        if not self.config.heartbeat or not isinstance(self.address, tuple):
            return None
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(Heartbeat, local_addr=self.address)
        except OSError as e:
            log.warning("%s: no UDP heartbeat on %s:%d: %s", self.name, *self.address, e)
            return None
        return transport

    # -- connections ----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        await conn.serve(self._out, self._sslctx)

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
        server = await self._serve()
        udp = await self._heartbeat()
        log.info(
            "%s: listening for the forward protocol on %s%s%s",
            self.name,
            self.address if isinstance(self.address, str) else "%s:%d" % self.address,  # noqa: UP031
            " (TLS)" if self.config.tls else "",
            " (shared key)" if self.config.shared_key else "",
        )
        self.ctx._closers.append(self._close_all)
        self.listening.set()
        self.mark_ready("listening on " + (self.address if isinstance(self.address, str) else "%s:%d" % self.address))  # noqa: UP031
        self.table.listening()
        watch = asyncio.create_task(self.table.watch(), name=f"source:{self.name}:timeouts")
        try:
            await self._stop.wait()
        finally:
            watch.cancel()
            server.close()
            self.table.stopped_listening()
            if udp is not None:
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
            if self.config.listen.startswith("unix://"):
                with contextlib.suppress(OSError):
                    os.unlink(self.config.listen[7:])

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
