"""Sink ``gelf``: records to Graylog as GELF 1.1, over UDP (chunked, compressed), TCP or TLS.

    address: gelf+udp://graylog:12201 | gelf+tcp://graylog:12201 | gelf+tls://graylog:12201

A record becomes one GELF message:

* ``version`` "1.1"; ``host`` from ``host.name`` (this machine's name when absent);
  ``short_message`` from ``message`` (``(empty)`` for a line Graylog would refuse as blank or
  trim to nothing); ``full_message`` from ``gelf.full_message``; ``timestamp`` from ``@timestamp``, epoch
  seconds with microseconds (Graylog 6.1 keeps milliseconds, rounded);
* ``level``: ``log.syslog.severity.code``, else ``log.level`` read with the vocabulary the
  sources use (collector/levels.py: ``error``, ``warn``, ``info``, ``fatal``, ...), else 3
  (error) for ``stream: stderr`` and 6 (info) otherwise, which is what Docker's gelf driver
  sends; a ``log.level`` that is no syslog level is kept as ``_log_level``;
* every other field flattened with ``_``: ``_container_name``, ``_container_image_name``,
  ``_stream``, ``_container_labels_com_docker_compose_project``, ``_log_file_path``; fields a GELF
  source set aside under ``gelf.`` go back to ``_name``; the batch's tag is ``_tag``.  Names keep
  only ``[A-Za-z0-9_.@-]`` (Graylog's rule); a name Graylog would not store as such gets a
  trailing ``_`` (a record's own ``source``, ``timestamp``, ``level``, ``streams``, ``_index``,
  ``gl2_*`` ...: see ``GRAYLOG_TAKEN``); ``_id`` is sent as it is (Graylog 6.1 stores it as
  ``id``).  Values are strings and numbers: lists of scalars joined with ``,``, other lists JSON,
  booleans ``"true"``/``"false"`` (Graylog skips JSON booleans).  Graylog itself then trims every
  string, skips empty ones and turns dots in names into ``_``.

UDP: each message is compressed (``compression``, gzip by default like Docker's driver) and
sent in one datagram, or in chunks of ``chunk_size`` bytes (1420 fits a 1500-byte MTU path;
8192 is GELF's largest chunk).  A message that needs more than 128 chunks is truncated
(``full_message``, then ``short_message``; ``_gelf_truncated_from`` holds the original JSON size)
or, with ``oversize: dead_letter`` (or when cutting the message text is not enough),
dead-lettered.  Records are encoded and compressed on the event loop; the datagrams of a round are
sent from a worker thread while the next round is encoded (a loopback or NIC send costs more than
compressing a log line, and it releases the GIL).  UDP has no acknowledgement: a batch is finalized
once its datagrams are handed to the kernel; send errors (``ECONNREFUSED`` when nothing
listens) are counted and the records counted as dropped (``send_failed``).

TCP/TLS: uncompressed, null-terminated; a message longer than ``max_message_bytes`` (Graylog's
GELF TCP input drops frames over its ``max_message_size``, 2 MiB by default) is truncated or
dead-lettered like an oversize UDP message.  A batch is finalized only once Graylog's TCP stack has
acknowledged its bytes (not merely once they reached our kernel: see tcp.py);
while Graylog is unreachable the sink reconnects as the one retry policy says (``retry``, see
collector/retry.py), keeping its place (the buffer in front fills, then the sources are paused);
with ``retry.max_elapsed`` a round still unwritten after that long is dead-lettered.  A
connection lost mid-round writes the whole round again: at-least-once.  GELF has no application acknowledgement, so what
Graylog's kernel accepted but Graylog itself never read (it crashed) cannot be known, nor resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import time
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from collector.acks import release
from collector.buffers import BufferReader
from collector.codecs.gelf import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MessageIds,
    compressor,
    frame,
    max_payload,
    split_chunks,
)
from collector.component import ClientTls, ComponentConfig, Context, Sink, SinkConfig
from collector.event import Batch
from collector.ratelog import RateLimitedLog
from collector.retry import RetryConfig
from collector.sinks.gelf.encoder import GelfEncoder, truncate_to_fit
from collector.sinks.gelf.tcp import GaveUpError, TcpConnection

__all__ = ["GelfEncoder", "GelfSink", "GelfSinkConfig", "truncate_to_fit"]

log = logging.getLogger("collector.sinks.gelf")

UDP_UNHEALTHY_SECONDS = 30.0  # a UDP sink reports failing this long after a send error
SCHEMES = {"gelf+udp": "udp", "gelf+tcp": "tcp", "gelf+tls": "tls", "udp": "udp", "tcp": "tcp", "tls": "tls"}


class GelfSinkBatch(ComponentConfig):
    max_events: int = Field(5000, ge=1, description="Records encoded and written together at most.")
    max_bytes: int = Field(
        16 << 20, ge=1024, description="Bytes of records (as held in the pipeline) written together at most."
    )
    timeout: float = Field(
        0.0,
        ge=0,
        le=60,
        description="Seconds a round may wait for more records before it is written; 0: write what is waiting at once.",
    )


class GelfSinkConfig(SinkConfig):
    type: Literal["gelf"]
    destination_keys: ClassVar[tuple[str, ...] | None] = ("address",)
    address: str = Field(
        description="`gelf+udp://HOST:PORT`, `gelf+tcp://HOST:PORT` or `gelf+tls://HOST:PORT` (Graylog's GELF input)."
    )
    compression: Literal["gzip", "zlib", "none"] = Field(
        "gzip", description="(UDP) compression of each message; TCP is never compressed (GELF's rule)."
    )
    compression_level: int = Field(1, ge=0, le=9, description="(UDP) zlib level: 1 is fastest, 9 smallest.")
    chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE,
        ge=256,
        le=MAX_CHUNK_SIZE,
        description="(UDP) largest datagram, chunk header included: 1420 fits a 1500-byte MTU path; "
        "8192 is GELF's largest chunk.",
    )
    oversize: Literal["truncate", "dead_letter"] = Field(
        "truncate",
        description="A message needing more than 128 chunks (UDP) or longer than `max_message_bytes` (TCP): "
        "cut its text to fit (flagged `_gelf_truncated_from`), or set it aside in the dead-letter file.",
    )
    max_message_bytes: int = Field(
        2 << 20,
        ge=1024,
        description="(TCP) longest message sent: Graylog's GELF TCP input drops longer frames (its "
        "`max_message_size`, 2 MiB by default); raise both together.",
    )
    tls: ClientTls = Field(default_factory=ClientTls, description="(gelf+tls) certificates, verification.")
    connect_timeout: float = Field(10.0, gt=0, description="(TCP) seconds to wait for a connection.")
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="(TCP) backoff between connection and write attempts (collector/retry.py). `max_elapsed`: "
        "records still not written after that long go to the dead letter; unset: retried until Graylog takes them.",
    )
    batch: GelfSinkBatch = Field(
        default_factory=GelfSinkBatch, description="How records are grouped into one round of writes."
    )
    ack_timeout: float = Field(
        30.0,
        gt=0,
        description="(TCP) seconds Graylog's TCP stack may take to acknowledge what was written; past it the "
        "connection is taken for dead, reopened, and the records written again.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)
        return v


def parse_address(address: str) -> tuple[str, str, int]:
    """``gelf+udp://graylog:12201`` -> ("udp", "graylog", 12201)."""
    u = urlsplit(address)
    transport = SCHEMES.get(u.scheme)
    try:
        port = u.port
    except ValueError:
        port = None
    if transport is None or not u.hostname or port is None:
        raise ValueError(f"{address!r}: expected gelf+udp://HOST:PORT, gelf+tcp://HOST:PORT or gelf+tls://HOST:PORT")
    return transport, u.hostname, port


# -- the sink ---------------------------------------------------------------------------------------
class GelfSink(Sink):
    config: GelfSinkConfig

    def __init__(self, name: str, config: GelfSinkConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.transport, self.host, self.port = parse_address(config.address)
        self.encoder = GelfEncoder(ctx.hostname)
        t = ctx.telemetry
        self._send_failed = t.dropped.labels(name, "send_failed")
        self._error = ctx.error_counter(name)
        self._retries = t.retries.labels(name, "connection")
        self._compress = compressor(config.compression, config.compression_level)
        self._ids = MessageIds()
        self._limit = max_payload(config.chunk_size)
        self._sock: socket.socket | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._tcp = TcpConnection(name, self.host, self.port, config, self._error)
        self._udp_state = "nothing sent yet"
        self._udp_failed_at = -1e9
        self._udp_last_error = ""
        self._say = RateLimitedLog(log)  # one line per reason per minute

    @property
    def where(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"

    def health(self) -> tuple[bool, str]:
        if self.transport != "udp":
            return self._tcp.healthy, f"{self.where}: {self._tcp.state}"
        ago = time.monotonic() - self._udp_failed_at
        if ago < UDP_UNHEALTHY_SECONDS:
            return False, f"{self.where}: a send failed {ago:.0f}s ago: {self._udp_last_error}"
        return True, f"{self.where}: {self._udp_state}"

    def _warn(self, reason: str, msg: str, *args: Any) -> None:
        self._say.warning(reason, msg, *args)

    async def _reach(self) -> None:
        """Reach Graylog before the first record (GET /ready says when): TCP connects (retrying
        as a write would; the first write waits for it), UDP resolves the address (a datagram is
        never answered)."""
        if self.transport == "udp":
            with contextlib.suppress(OSError):  # said, and counted, when records come
                await self._udp_socket()
            return
        try:
            await self._tcp.connect()
        except GaveUpError:
            return  # retry.max_elapsed passed: the writes that follow set their records aside
        self.mark_reached(f"{self.where}: {self._tcp.state}")

    async def _round(self, inbox: BufferReader, first: Batch) -> list[Batch]:
        """``first`` and what follows it, up to ``batch.max_events`` records and ``batch.max_bytes``,
        waiting at most ``batch.timeout`` for more."""
        cfg = self.config.batch
        batches = [first]
        n, size = len(first), first.nbytes
        deadline = time.monotonic() + cfg.timeout
        while n < cfg.max_events and size < cfg.max_bytes:
            b = inbox.recv_nowait()
            if b is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    b = await asyncio.wait_for(inbox.recv(), left)
                except TimeoutError:
                    break
                if b is None:  # closed: the caller's next recv() says so too
                    break
            batches.append(b)
            n += len(b)
            size += b.nbytes
        return batches

    async def run(self, inbox: BufferReader) -> None:
        reaching = asyncio.create_task(self._reach(), name=f"sink:{self.name}:reach")
        try:
            while (first := await inbox.recv()) is not None:
                if not reaching.done():  # the first connection, made at start
                    await reaching
                batches = await self._round(inbox, first)
                if self.transport == "udp":
                    await self._deliver_udp(batches)
                else:
                    await self._deliver_tcp(batches)
            await self._udp_flush()
        finally:
            reaching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaching
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()  # stopped at the drain deadline: those records are not acknowledged
            self._tcp.close()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # -- UDP ------------------------------------------------------------------------------------------
    async def _udp_socket(self) -> socket.socket:
        if self._sock is None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(addr)  # connected: ICMP errors (nothing listening) are reported to us
            self._sock = sock
            self._udp_state = f"sending to {addr[0]}:{addr[1]}"
            self.mark_reached(f"{self.where}: {self._udp_state} (UDP: nothing answers)")
        return self._sock

    async def _deliver_udp(self, batches: list[Batch]) -> None:
        """Encode and compress this round on the loop; send it from a thread while the next one is encoded."""
        try:
            sock = await self._udp_socket()
        except OSError as e:
            # cannot even resolve the name: the records are lost like any UDP datagram, counted
            n = sum(len(b) for b in batches)
            self._error("resolve_failed")
            self._send_failed.inc(n)
            self._udp_failed_at = time.monotonic()
            self._udp_last_error = f"cannot resolve {self.host}: {e}"
            self._warn("resolve", "%s: cannot resolve %s (%s): %d record(s) dropped", self.name, self.host, e, n)
            for b in batches:
                release(b.ack, failed=len(b))
            return
        compress = self._compress
        docs = [[(d, compress(d)) for d in self.encoder.encode(b)] for b in batches]
        await self._udp_flush()  # at most one round in the sender thread
        self._inflight = asyncio.create_task(self._send_and_ack(sock, batches, docs))

    async def _udp_flush(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await task

    async def _send_and_ack(
        self, sock: socket.socket, batches: list[Batch], docs: list[list[tuple[bytes, bytes]]]
    ) -> None:
        with self.meter.request():
            results = await asyncio.to_thread(self._send_round, sock, docs)
        for batch, (sent, failed, oversize) in zip(batches, results, strict=True):
            if oversize:
                self.ctx.deadletter.records(
                    self.name, [(reason, doc, {"tag": batch.tag, "source": batch.source}) for reason, doc in oversize]
                )
            if sent:
                self.meter.delivered(sent)
            if failed:
                self._send_failed.inc(failed)
            release(batch.ack, rejected=len(oversize), failed=failed)

    def _send_round(
        self, sock: socket.socket, docs: list[list[tuple[bytes, bytes]]]
    ) -> list[tuple[int, int, list[Any]]]:
        """(In a thread.) Chunk and send (json, payload) pairs; per batch: (sent, failed, oversize records)."""
        chunk_size = self.config.chunk_size
        send = sock.send
        out = []
        for batch_docs in docs:
            sent = failed = 0
            oversize: list[tuple[str, bytes]] = []
            for doc, payload in batch_docs:
                if len(payload) <= chunk_size:
                    datagrams = [payload]
                else:
                    datagrams = self._chunk(doc, payload, oversize)
                    if not datagrams:
                        continue
                ok = True
                for d in datagrams:
                    while True:
                        try:
                            send(d)
                            break
                        except (BlockingIOError, InterruptedError):
                            select.select([], [sock], [], 1.0)
                        except OSError as e:
                            ok = False
                            self._udp_error(e)
                            break
                    if not ok:
                        break
                if ok:
                    sent += 1
                else:
                    failed += 1
            out.append((sent, failed, oversize))
        return out

    def _udp_error(self, e: OSError) -> None:
        reason = "udp_" + (errno.errorcode.get(e.errno, "error").lower() if e.errno else "error")
        self._error(reason)
        self._udp_failed_at = time.monotonic()
        self._udp_last_error = str(e)
        self._warn(reason, "%s: sending to %s failed: %s", self.name, self.where, e)

    def _chunk(self, doc: bytes, payload: bytes, oversize: list[tuple[str, bytes]]) -> list[bytes]:
        limit = self._limit
        if len(payload) > limit:
            fitted = None if self.config.oversize == "dead_letter" else truncate_to_fit(doc, self._compress, limit)
            if fitted is None:
                reason = (
                    f"too_large: {len(payload)} bytes compressed need more than 128 chunks of {self.config.chunk_size}"
                )
                oversize.append((reason, doc))
                return []
            self._error("truncated")
            self._warn(
                "truncated",
                "%s: a message of %d bytes needs more than 128 chunks: its text was cut",
                self.name,
                len(doc),
            )
            payload = fitted[1]
        return split_chunks(payload, self._ids.next(), self.config.chunk_size)

    # -- TCP ------------------------------------------------------------------------------------------
    async def _deliver_tcp(self, batches: list[Batch]) -> None:
        encode = self.encoder.encode
        limit = self.config.max_message_bytes
        frames = []
        fitted = []
        for b in batches:
            docs = encode(b)
            if any(len(doc) > limit for doc in docs):
                docs = self._fit_tcp(b, docs, limit)
            fitted.append(docs)
            frames.extend(frame(doc) for doc in docs)
        data = b"".join(frames)
        n = len(frames)
        try:
            with self.meter.request():
                await self._tcp.write(data, n, self._retries.inc)
        except GaveUpError as e:
            reason = f"retries_exhausted: {e}"
            for b, docs in zip(batches, fitted, strict=True):
                origin = {"tag": b.tag, "source": b.source}
                self.ctx.deadletter.records(self.name, [(reason, doc, origin) for doc in docs])
                release(b.ack, rejected=len(b))  # these, and the oversize ones _fit_tcp set aside
            return
        self.meter.delivered(n)
        for b, docs in zip(batches, fitted, strict=True):
            release(b.ack, rejected=max(0, len(b) - len(docs)))  # oversize ones were dead-lettered

    def _fit_tcp(self, batch: Batch, docs: list[bytes], limit: int) -> list[bytes]:
        """Documents longer than Graylog's TCP frame limit: cut to fit, or dead-lettered."""
        out = []
        for doc in docs:
            if len(doc) <= limit:
                out.append(doc)
                continue
            fitted = None if self.config.oversize == "dead_letter" else truncate_to_fit(doc, bytes, limit)
            if fitted is None:
                reason = f"too_large: {len(doc)} bytes > max_message_bytes {limit}"
                self.ctx.deadletter.records(self.name, [(reason, doc, {"tag": batch.tag, "source": batch.source})])
                continue
            self._error("truncated")
            self._warn(
                "truncated",
                "%s: a message of %d bytes is longer than max_message_bytes: its text was cut",
                self.name,
                len(doc),
            )
            out.append(fitted[0])
        return out
