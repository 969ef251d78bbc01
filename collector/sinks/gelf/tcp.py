"""The TCP/TLS side of the GELF sink: one connection, reopened with backoff, writes confirmed.

Connection and write failures share one :class:`~collector.retry.Backoff` per round (the sink's
``retry``); the warning is said once per outage and then at most every 30 s.

A write counts only once Graylog's TCP stack has acknowledged every byte (Linux SIOCOUTQ):
``drain()`` only says the bytes reached our kernel, and had the connection died then, what sat in
the send queue (megabytes) would be lost while acknowledged upstream.  GELF has no application
acknowledgement, so this is as far as delivery can be confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from collector.ratelog import RateLimitedLog
from collector.retry import Backoff

log = logging.getLogger("collector.sinks.gelf")


class GaveUpError(Exception):
    """``retry.max_elapsed`` passed with the round still unwritten."""


class TcpConnection:
    def __init__(self, name: str, host: str, port: int, config: Any, error: Callable[[str], None]) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.config = config
        self.tls = config.address.startswith(("gelf+tls:", "tls:"))
        self._error = error
        self.where = f"{'tls' if self.tls else 'tcp'}://{host}:{port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None
        self._warn = RateLimitedLog(log, interval=30.0)
        self.healthy = True
        self.state = "not connected yet"

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        t = self.config.tls
        ctx = ssl.create_default_context(cafile=t.ca_file)
        if t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        if not t.verify or t.fingerprint:  # a pinned certificate is checked by its fingerprint instead
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None
        self._reader = None

    async def _watch_eof(self, reader: asyncio.StreamReader) -> None:
        """Graylog never writes on a GELF connection: end of stream means it closed it."""
        with contextlib.suppress(Exception):
            while await reader.read(4096):
                pass
        if self._reader is reader:
            log.warning("%s: %s closed the connection; reconnecting", self.name, self.where)
            self.close()

    async def _connect(self, backoff: Backoff) -> asyncio.StreamWriter:
        cfg = self.config
        ctx = self._ssl()
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=ctx,
                        server_hostname=(cfg.tls.server_name or self.host) if ctx else None,
                    ),
                    cfg.connect_timeout,
                )
            except (OSError, TimeoutError, ssl.SSLError) as e:
                self._error("connect_failed")
                await self._retry(backoff, f"cannot connect to Graylog at {self.where}: {str(e) or type(e).__name__}")
                continue
            if ctx is not None and not cfg.tls.fingerprint_matches(
                writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            ):
                writer.transport.abort()
                self._error("tls_fingerprint_mismatch")
                await self._retry(
                    backoff, f"{self.where}: the server's certificate is not the one tls.fingerprint pins"
                )
                continue
            writer.transport.set_write_buffer_limits(high=0)  # drain() returns once all is handed to the kernel
            if backoff.attempts:
                log.info(
                    "%s: connected to %s again after %d failed attempt(s) over %.0fs",
                    self.name,
                    self.where,
                    backoff.attempts,
                    backoff.elapsed,
                )
            self._reader, self._writer = reader, writer
            self._watch = asyncio.create_task(self._watch_eof(reader), name=f"sink:{self.name}:eof")
            self.healthy = True
            self.state = f"connected since {time.strftime('%H:%M:%S')}"
            return writer

    async def _retry(self, backoff: Backoff, why: str) -> None:
        """Wait before the next attempt (rate-limited warning); GaveUpError past ``max_elapsed``."""
        delay = backoff.delay()
        self.healthy = False
        self.state = f"{why} (attempt {backoff.attempts})"
        if backoff.expired:
            raise GaveUpError(f"{why}; gave up after {backoff.attempts} attempt(s) over {backoff.elapsed:.0f}s")
        self._warn.warning("retrying", "%s: %s; retrying in %.1fs (records wait in the buffer)", self.name, why, delay)
        await asyncio.sleep(delay)

    async def _wait_acknowledged(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None or _OUTQ is None:
            return
        fd = sock.fileno()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ack_timeout
        delay = 0.0005
        while (left := _unacknowledged(fd)) > 0:
            if writer.is_closing() or self._writer is not writer:
                raise ConnectionResetError(f"connection closed with {left} bytes not acknowledged")
            if loop.time() > deadline:
                raise TimeoutError(f"{left} bytes not acknowledged after {self.config.ack_timeout:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def connect(self) -> None:
        """Connect now (retrying with backoff) unless connected: before the first record."""
        if self._writer is None or self._writer.is_closing():
            self.close()
            await self._connect(Backoff(self.config.retry))

    async def write(self, data: bytes, records: int, retried: Callable[[int], None]) -> None:
        """Write ``data`` until Graylog's TCP stack has it all, reconnecting as often as needed
        (GaveUpError when ``retry.max_elapsed`` passes first)."""
        backoff = Backoff(self.config.retry)
        while True:
            writer = self._writer
            if writer is None or writer.is_closing():
                self.close()
                writer = await self._connect(backoff)
            try:
                writer.write(data)
                await writer.drain()
                await self._wait_acknowledged(writer)
                break
            except (OSError, ssl.SSLError, RuntimeError) as e:  # RuntimeError: transport closed under us
                retried(records)
                self._error("write_failed")
                self.close()
                why = f"writing {records} record(s) to {self.where} failed ({e or type(e).__name__}); reconnecting"
                await self._retry(backoff, why)
        self._warn.reset("retrying")


try:  # bytes written but not yet acknowledged by the peer (Linux SIOCOUTQ == TIOCOUTQ)
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _OUTQ = None


def _unacknowledged(fd: int) -> int:
    assert _OUTQ is not None
    return struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0]
