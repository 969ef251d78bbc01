"""One forward-protocol connection: handshake, the read loop, acks, and how it ends.

The read loop awaits the emission of what each read decoded before reading again, so when
the pipeline is full the socket is no longer read and TCP pushes back on the client (the
stream reader holds at most ``2 * read_bytes``; the rest stays in kernel buffers).

A connection that breaks the protocol (not msgpack, wrong shapes, too large, failed
authentication) is closed; the reason is counted (``collector_errors_total{reason}``), logged
once per reason and minute, and the offending bytes go to the dead-letter file with the peer's
address.  The listener's table (collector/listeners.py) sees each read: it closes a connection
whose message takes longer than ``read_timeout`` to arrive (our own time spent emitting does
not count), that holds more than the listener's share of memory, or that is idle when a new
one needs its slot.
Bad *entries* inside a well-formed message are set aside the same way but the rest of the
message is accepted (and acknowledged): closing would make an at-least-once client resend the
same bad chunk forever.  A message none of whose entries can be read is not acknowledged at
all (records.py raises :class:`Unreadable`): reading stops, the acks still owed are sent, the
connection closes, and the client keeps the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from collector.codecs.forward import ForwardError, check_ping, helo, pong
from collector.sources.fluent_forward.intake import Intake, Unit
from collector.sources.fluent_forward.records import Decoder, Unreadable

if TYPE_CHECKING:
    from collector.component import Emitter
    from collector.listeners import ConnectionTable

log = logging.getLogger("collector.sources.fluent_forward")

MAX_UNREAD_ACKS = 4 << 20  # bytes of acks a client leaves unread before we give up on it
GATHER_RECORDS = 1024  # records gathered over reads into one batch, while more bytes are already here
GATHER_READS = 16  # (and within batch.max_bytes and batch.timeout)


class Connection:
    def __init__(
        self,
        intake: Intake,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        table: ConnectionTable | None = None,
    ) -> None:
        self.intake = intake
        self.config = intake.config
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.table = table
        self.loop = asyncio.get_running_loop()
        # what the listener's table watches (listeners.Tracked)
        p = writer.get_extra_info("peername")
        self.peer_host = str(p[0]) if isinstance(p, tuple) and p else ""
        self.last_active = self.loop.time()
        self.message_since: float | None = None
        self.held = 0
        self.killed: str | None = None
        # the decoder calls back through a weak reference: a Connection <-> Decoder cycle kept
        # each closed connection (its buffers, ~65 kB) until a rare full GC (app.tune_gc)
        self.decoder = Decoder(intake, peer, _weakly(self._chunk_done))
        self.stopping = False
        self.ended = False  # no more reading (acks may still be owed)
        self.task: asyncio.Task[Any] | None = None
        self.on_close: Callable[[Connection], Any] | None = None
        self._forced = False
        self._in_read = False
        self._last = b""  # the last bytes read (what a refusal dead-letters)

    # -- acks -------------------------------------------------------------------------------------
    @property
    def open_chunks(self) -> int:
        """Acks promised and not sent yet."""
        return self.decoder.open_chunks

    def _chunk_done(self, chunk: str) -> None:
        # one write per ack, as soon as it is due: nothing held back to be coalesced
        w = self.writer
        if not w.is_closing():
            w.write(self.decoder.ack(chunk))
            if w.transport.get_write_buffer_size() > MAX_UNREAD_ACKS:
                self._refuse(ForwardError("acks not read", "the client does not read its acks"))
        if (self.stopping or self.ended) and self.open_chunks <= 0:
            self.close()

    # -- lifecycle --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading soon; the connection stays open until its promised acks are sent."""
        self.stopping = True
        if self._in_read and self.task is not None:
            self.task.cancel()

    def abort(self) -> None:
        """Stop now, without emitting anything more (the pipeline is being torn down)."""
        self._forced = self.stopping = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        if self.on_close is not None:
            self.on_close(self)
            self.on_close = None
        # no reference cycles left behind: a closed connection is freed at once, not by a
        # (rare, see app.tune_gc) full collection
        self.decoder.send_ack = _no_ack
        self.task = None

    def kill(self, reason: str) -> None:
        """Closed by the listener (a timeout, an idle slot given to a new client, memory):
        counted and logged there; acks still owed are not sent (the client resends)."""
        self.killed = reason
        self.writer.transport.abort()
        self.close()

    async def serve(self, out: Emitter, tls: ssl.SSLContext | None = None) -> None:
        self.task = asyncio.current_task()
        cancelled = False
        try:
            if tls is not None and not await self._start_tls(tls):
                return
            if self.config.shared_key is not None:
                await self._handshake()
            await self._read_loop(out)
        except Unreadable:
            pass  # logged and set aside by records.py; no ack: the client keeps it
        except ForwardError as e:
            self._refuse(e)
        except _Refused:
            pass
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError) as e:
            log.debug("%s: %s: connection ended: %r", self.intake.name, self.peer, e)
        except asyncio.CancelledError:
            if not self.stopping or self._forced or self.task is None:
                cancelled = True
                raise
            self.task.uncancel()  # our own stop(): the read was interrupted, not the task
        except Exception:  # a bug must cost one connection, never the source
            self.intake.say.error("internal", "%s: unexpected error; connection closed", self.peer, exc_info=True)
            self.intake.error("internal")
        finally:
            self.ended = True
            if self.decoder.partials and not cancelled:  # split lines whose end will not come
                with contextlib.suppress(Exception):
                    self.decoder.flush_partials()
                    await self._emit(out, self.decoder.take())
            if self.open_chunks <= 0 or self.writer.is_closing():
                self.close()

    def _refuse(self, e: ForwardError) -> None:
        self.intake.ctx.deadletter.raw(
            self.intake.name, f"{e.reason}: {e.detail} (connection closed)", self._last, peer=self.peer
        )
        log.debug("%s: %s: closing: %s", self.intake.name, self.peer, e)
        self.close()

    async def _start_tls(self, tls: ssl.SSLContext) -> bool:
        """The TLS handshake, done here (not by the server) so that failures are counted."""
        try:
            await self.writer.start_tls(tls, ssl_handshake_timeout=self.config.handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None) or type(e).__name__
            self.intake.error("tls_failed")
            self.intake.warn("tls_failed", "TLS handshake with %s failed: %s", self.peer, reason)
            self.writer.transport.abort()
            return False
        return True

    # -- handshake --------------------------------------------------------------------------------
    async def _handshake(self) -> None:
        cfg = self.config
        assert cfg.shared_key is not None  # serve() calls this only then
        key = cfg.shared_key.get_secret_value()
        users = {u.username: u.password.get_secret_value() for u in cfg.users}
        nonce = os.urandom(16)
        auth_salt = os.urandom(16) if users else b""
        self.writer.write(helo(nonce, auth_salt or ""))
        try:
            msg = await asyncio.wait_for(self._read_object(), cfg.handshake_timeout)
        except TimeoutError:
            self.intake.error("handshake_timeout")
            self.intake.warn("handshake_timeout", "%s did not answer HELO in time", self.peer)
            self.close()
            raise _Refused from None
        ok, reason, salt, host = check_ping(msg, nonce, key, auth_salt, users or None)
        hostname = cfg.self_hostname or self.intake.ctx.hostname
        self.writer.write(pong(ok, reason, salt, nonce, hostname, key))
        if not ok:
            self.intake.error("auth_failed")
            self.intake.warn("auth_failed", "refused %s (hostname %r): %s", self.peer, host or "?", reason)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.drain(), 5)
            self.close()
            raise _Refused
        log.debug("%s: %s (%s) authenticated", self.intake.name, self.peer, host)
        self.decoder.client_host(host)

    async def _read_object(self) -> Any:
        dec = self.decoder
        while True:
            try:
                return dec.next_object()
            except StopIteration:
                pass
            except ForwardError:
                raise
            except (msgpack.UnpackException, ValueError, TypeError) as e:
                raise undecodable(e) from None
            data = await self.reader.read(4096)
            if not data:
                raise ConnectionError("closed during the handshake")
            self._last = data
            dec.feed(data)

    # -- reading ----------------------------------------------------------------------------------
    async def _emit(self, out: Emitter, unit: Unit) -> None:
        for b in self.intake.batches(unit):
            await out.emit(b)

    async def _read_loop(self, out: Emitter) -> None:
        dec = self.decoder
        read = self.reader.read
        size = self.config.read_bytes
        wait = self.config.partial_timeout
        table = self.table
        loop = self.loop
        batch = self.config.batch
        gather_records = min(GATHER_RECORDS, batch.max_events)
        gathered = 0
        gather_until = 0.0  # batch.timeout after the read that began the batch
        while True:
            # our own time (decoding, waiting for room downstream) does not count against the client
            t0 = loop.time()
            since, self.message_since = self.message_since, None
            # decode what is buffered (first time round: what came along with the PING)
            for unit in _decoded(dec):
                await self._emit(out, unit)
                await asyncio.sleep(0)  # a huge message must not starve the other connections
            if dec.partials:  # split lines waiting too long for their next part
                dec.flush_partials(wait)
            if gathered == 0:
                gather_until = t0 + batch.timeout
            if (
                dec.unit.count < gather_records
                and dec.unit.nbytes < batch.max_bytes
                and gathered < GATHER_READS
                and loop.time() < gather_until
                and _more_ready(self.reader)
            ):
                gathered += 1  # more bytes are already here: read them into the same batch first
            else:
                await self._emit(out, dec.take())
                gathered = 0
            if self.stopping or self.killed:
                break
            if table is not None:
                now = loop.time()
                if since is not None:
                    self.message_since = since + (now - t0)
                if not table.active(self, now, dec.buffered, dec.held):
                    self.killed = "memory_budget"
                    raise _Refused
            self._in_read = True
            try:
                if dec.partials:
                    data = await asyncio.wait_for(read(size), wait)
                else:
                    data = await read(size)
            except TimeoutError:
                continue
            finally:
                self._in_read = False
            if not data:
                break
            self._last = data
            dec.feed(data)
        if dec.buffered and not self.stopping and not self.killed:
            self.intake.ctx.deadletter.raw(
                self.intake.name,
                f"truncated message: the connection ended {dec.buffered} bytes into a message",
                self._last,
                peer=self.peer,
            )


def _decoded(dec: Decoder) -> Iterator[Unit]:
    """``dec.units()`` with msgpack's own errors turned into ForwardError."""
    it = dec.units()
    while True:
        try:
            unit = next(it)
        except StopIteration:
            return
        except ForwardError:
            raise
        except (msgpack.UnpackException, ValueError, TypeError) as e:
            raise undecodable(e) from None
        yield unit


def _weakly(method: Callable[[str], None]) -> Callable[[str], None]:
    """``method`` without keeping its object alive (an ack due after it is gone is a no-op)."""
    ref = weakref.WeakMethod(method)

    def call(chunk: str) -> None:
        m = ref()
        if m is not None:
            m(chunk)

    return call


def _more_ready(reader: asyncio.StreamReader) -> bool:
    """Bytes are waiting in the stream already (the next read will not wait).  Reads are small
    (read_bytes) to bound memory; batches need not be."""
    return bool(getattr(reader, "_buffer", None))


def undecodable(e: Exception) -> ForwardError:
    if isinstance(e, msgpack.StackError):
        return ForwardError("too deeply nested", "msgpack nesting beyond what we decode")
    text = str(e)
    if "exceeds max_" in text:
        return ForwardError("message too large", text)
    if isinstance(e, TypeError):
        return ForwardError("bad map key", text)
    return ForwardError("not msgpack", text or type(e).__name__)


def _no_ack(chunk: str) -> None:
    """Where an ack goes once its connection is closed."""


class _Refused(Exception):
    """Authentication failed; the client was told why."""


def peer_name(writer: asyncio.StreamWriter) -> str:
    p = writer.get_extra_info("peername")
    if isinstance(p, tuple) and len(p) >= 2:
        host = f"[{p[0]}]" if ":" in str(p[0]) else str(p[0])
        return f"{host}:{p[1]}"
    return str(p or "unix")


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
