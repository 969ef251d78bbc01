"""From decoded forward messages to records: split lines, bad entries, units for the intake.

One :class:`ConnectionReader` per connection turns the msgpack stream (or JSON, see
codecs/forward/jsonstream.py) into units of records (intake.py makes them batches).  Records map
to the same fields as the json-file source (mapping.py).

Entries: ``[time, record]`` with an integer, float, EventTime or msgpack-timestamp time, and
Fluent Bit's ``[[time, metadata], record]``; its group markers (OpenTelemetry groups) carry no
record and are skipped.  A bad entry is set aside (dead letter) and the rest of its message is
delivered and acknowledged.  A message none of whose entries can be read is not acknowledged:
the connection is closed with an ERROR naming the peer and the entries' shape, so the client
keeps the data (and retries) and a person sees why.

Docker splits lines longer than 16 KB; the parts (``partial_message``, ``partial_id``,
``partial_ordinal``, ``partial_last``) are rejoined per container and stream, capped at
``max_record_bytes`` (flagged ``truncated``); a line whose last part never comes is emitted
as it is after ``partial_timeout``, flagged ``incomplete``.  The chunk of a part is acknowledged
once the part is in the rejoin buffer, not when the line is whole: clients (Docker's driver,
fluent-logger) wait for each ack before sending the next part.  A crash between that ack and the
delivery of the rejoined line therefore loses that one line.

Record ids: ``<chunk>-<index in the message>`` when the client sent a chunk (a resent chunk
gets the same ids, so Elasticsearch refuses the duplicates), otherwise a random per-connection
prefix and a counter.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson

from collector.acks import Ack
from collector.codecs.forward import (
    GROUP_END,
    GROUP_START,
    ForwardError,
    ForwardTimes,
    Framer,
    Stamp,
    Undecodable,
    ack_response,
    packed_entries,
    split_message,
    text,
)
from collector.codecs.forward.jsonstream import JsonStream
from collector.codecs.partial import PartialLine
from collector.sources.fluent_forward.intake import GroupKey, Intake, Unit, chunk_ack
from collector.sources.fluent_forward.mapping import NO_NAME, RecordMapping, flag, sender

log = logging.getLogger("collector.sources.fluent_forward")

MAX_PENDING_PARTIALS = 256  # split lines being rejoined on one connection (Docker: 2, stdout and stderr)
YIELD_EVERY = 4096  # entries (good or bad) decoded before the event loop gets a turn
MAX_BAD_KEPT = 100  # bad entries of one message kept for the dead letter (the rest only counted)
MAX_BAD_ENTRIES = 10_000  # a message with more bad than good entries past this is refused as a whole


class Unreadable(ForwardError):
    """A message none of whose entries could be read: not acknowledged, connection closed."""


@dataclass(slots=True)
class Partial(PartialLine):
    """A line Docker split, being rejoined (its parts in ``ordinals`` order)."""

    pid: str
    group: GroupKey
    event: dict[str, Any]  # timestamp, stream and extras of the first part
    rid: str
    ordinals: list[int] = field(default_factory=list)  # partial_ordinal of each part kept
    first: float = field(default_factory=time.monotonic)


class ConnectionReader(RecordMapping):
    """What one connection sends, read: decoded (codecs/forward/), mapped to records (mapping.py),
    split lines rejoined, grouped into units for the intake, chunk acks answered."""

    def __init__(self, intake: Intake, peer: str, send_ack: Callable[[str], None]) -> None:
        cfg = intake.config
        self.intake = intake
        self.peer = peer
        self.send_ack = send_ack
        self.times = ForwardTimes()
        self.max_bytes = cfg.max_message_bytes
        self.max_decompressed = cfg.max_decompressed_bytes
        self.max_record = cfg.max_record_bytes
        self.max_events = cfg.batch.max_events
        self.max_batch_bytes = cfg.batch.max_bytes
        self.framer = Framer(self.max_bytes, self.times)  # decodes nothing before it is whole
        self.fed = 0
        self.unit = Unit()
        self.partials: dict[tuple[str, str], Partial] = {}
        self._prefix = uuid.uuid4().hex[:20] + "-"
        self._seq = 0
        self.open_chunks = 0  # chunks whose ack is not sent yet
        self.host = sender(peer, intake.ctx.hostname)  # host.name of records that do not say theirs
        self.json: JsonStream | None = None  # a client speaking JSON instead of msgpack

    def client_host(self, hostname: str) -> None:
        """The hostname the client gave in its PING (Fluent Bit's ``self_hostname``)."""
        if hostname.strip().lower() not in NO_NAME:
            self.host = hostname

    def _chunk_done(self, chunk: str, ack: Ack) -> None:
        self.open_chunks -= 1
        self.intake.acked(ack, self.peer, chunk)
        self.send_ack(chunk)

    # -- input ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.json is None and self.fed == 0 and data[:1] == b"[":
            self.json = JsonStream(self.max_bytes)  # fluent-logger-golang's MarshalAsJSON, as Fluentd reads it
        self.fed += len(data)
        if self.json is not None:
            self.json.feed(data)
            return
        self.framer.feed(data)

    def ack(self, chunk: str) -> bytes:
        """The ack for ``chunk``, in the encoding the client speaks."""
        if self.json is not None:
            return orjson.dumps({"ack": chunk})
        return ack_response(chunk)

    @property
    def buffered(self) -> int:
        """Bytes received after the last complete message (one still arriving)."""
        return self.json.pending if self.json is not None else self.framer.buffered

    @property
    def held(self) -> int:
        """Bytes held in memory for the message still arriving (what the listener charges)."""
        return self.json.pending if self.json is not None else self.framer.held

    def next_object(self) -> Any:
        """One decoded object, or StopIteration (the handshake reads PING this way)."""
        return next(self.framer)

    def take(self) -> Unit:
        u, self.unit = self.unit, Unit()
        return u

    def units(self) -> Iterator[Unit]:
        """Decode everything buffered; yields a unit whenever ``batch.max_events`` records or
        ``batch.max_bytes`` are ready.

        What is left in ``self.unit`` afterwards is for the caller to :meth:`take`.
        """
        limit = self.max_events
        max_bytes = self.max_batch_bytes
        for msg in self.framer if self.json is None else self.json:
            tag, mode, payload, options = split_message(msg)
            tag = text(tag)
            chunk = options.get("chunk")
            waiter = None
            if chunk is not None:
                if type(chunk) is not str:
                    raise ForwardError("bad option", "chunk must be a string")
                waiter = chunk_ack(chunk, self._chunk_done)
                self.open_chunks += 1
                self.unit.hold(waiter)
            bad = Bad()
            if mode == "message":
                self._message(tag, payload, chunk, options, bad)
                n = 1
            else:
                entries = payload
                if mode == "packed":
                    entries = packed_entries(payload, options, self.times, self.max_decompressed)
                n = yield from self._entries(tag, entries, chunk, waiter, bad)
            if bad.count and bad.count == n:  # nothing of it could be read: refuse it, never ack it
                if waiter is not None:
                    self.unit.waiters.remove(waiter)
                    self.open_chunks -= 1
                if self.unit.count or self.unit.waiters:
                    yield self.take()  # what came before it is delivered (and acknowledged) first
                self._unreadable(tag, mode, bad, chunk)
            if bad:
                self._dead_letter(tag, bad, n)
            size = options.get("size")
            if size is not None and size != n:
                self.intake.error("size_mismatch")
                self.intake.warn("size_mismatch", "%s said size=%r for %d event(s) (tag %r)", self.peer, size, n, tag)
            if waiter is not None:
                waiter.done()  # the message is decoded: only the units holding its records hold it now
            if self.unit.count >= limit or self.unit.nbytes >= max_bytes:
                yield self.take()

    # -- messages --------------------------------------------------------------------------------
    def _message(self, tag: str, entry: tuple[Any, Any], chunk: str | None, options: Any, bad: Bad) -> None:
        t, rec = entry
        try:
            meta = options.get("metadata")  # Fluent Bit's Message mode carries the metadata here
            if type(t) is list:
                t, meta = _header(t)
            if t is GROUP_START or t is GROUP_END:
                return
            ts = self.times.any(t)
            self._record(tag, ts, rec, f"{text(chunk)}-0" if chunk is not None else self._next_id(), meta)
        except ForwardError as e:
            bad.append((e.reason, [entry[0], rec]))

    def _entries(self, tag: str, entries: Any, chunk: str | None, waiter: Ack | None, bad: Bad) -> Iterator[Unit]:
        """Add every ``[time, record]`` of a Forward/PackedForward message; yields the current
        unit whenever it is full, or every YIELD_EVERY entries (the loop gets a turn); returns
        the number of entries."""
        limit = self.max_events
        max_bytes = self.max_batch_bytes
        unit = self.unit
        any_time = self.times.any
        record = self._record
        cid = text(chunk) if chunk is not None else None  # ids are JSON text; the ack echoes the chunk as sent
        i = 0
        for entry in entries:
            try:
                if type(entry) is not list or len(entry) != 2:
                    if type(entry) is Undecodable:
                        raise ForwardError(entry.reason, entry.detail)
                    raise ForwardError("bad entry", "an entry must be [time, record]")
                t = entry[0]
                meta = None
                if type(t) is list:  # Fluent Bit: [[time, metadata], record]
                    t, meta = _header(t)
                    if t is GROUP_START or t is GROUP_END:  # an OpenTelemetry group opens or closes
                        i += 1
                        continue
                rid = f"{cid}-{i}" if cid is not None else self._next_id()
                record(tag, any_time(t), entry[1], rid, meta)
            except ForwardError as e:
                bad.append((e.reason, entry))
                if bad.count > MAX_BAD_ENTRIES and bad.count > i - bad.count:
                    raise ForwardError("too many bad entries", f"{bad.count} of the first {i + 1}") from None
            i += 1
            if unit.count >= limit or unit.nbytes >= max_bytes or not i % YIELD_EVERY:
                yield self.take()
                unit = self.unit
                if waiter is not None:
                    unit.hold(waiter)
        return i

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._prefix}{self._seq:x}"

    # -- split lines -----------------------------------------------------------------------------
    def _partial(
        self,
        key: GroupKey,
        stream: str,
        ev: dict[str, Any],
        part: str,
        rid: str,
        rec: dict[str, Any],
    ) -> None:
        pid = rec.get("partial_id")
        pid = str(pid) if pid is not None else ""
        try:
            ordinal = int(rec.get("partial_ordinal"))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            ordinal = -1
        last = rec.get("partial_last") in ("true", True)
        slot = (key[1] or "", stream)
        p = self.partials.get(slot)
        if p is not None and (p.pid != pid or p.group != key):
            self._emit_partial(self.partials.pop(slot), complete=False)
            p = None
        if p is None:
            if len(self.partials) >= MAX_PENDING_PARTIALS:  # memory: emit the oldest as it is
                oldest = min(self.partials, key=lambda k: self.partials[k].first)
                self._emit_partial(self.partials.pop(oldest), complete=False)
            p = self.partials[slot] = Partial(pid=pid, group=key, event=ev, rid=rid)
        if ordinal < 0:
            ordinal = len(p.parts) + 1
        if not p.truncated:
            p.ordinals.append(ordinal)
            p.add(part, self.max_record)
        if last:
            del self.partials[slot]
            self._emit_partial(p, complete=True)

    def _emit_partial(self, p: Partial, complete: bool) -> None:
        parts = sorted(zip(p.ordinals, p.parts, strict=True), key=lambda x: x[0])
        ev = p.event
        ev["message"] = "".join(t for _, t in parts)
        if complete and not p.truncated and [o for o, _ in parts] != list(range(1, len(parts) + 1)):
            complete = False  # a part is missing (e.g. we started listening mid-line)
        if p.truncated:
            flag(ev, "truncated")
        if not complete:
            flag(ev, "incomplete")
        self._add(self.unit, p.group, ev, p.rid, p.size)

    def flush_partials(self, older_than: float | None = None) -> int:
        """Emit split lines still waiting for parts (all, or those older than ``older_than``
        seconds) as they are, flagged ``incomplete``; returns how many."""
        now = time.monotonic()
        n = 0
        for slot, p in list(self.partials.items()):
            if older_than is None or now - p.first >= older_than:
                del self.partials[slot]
                self._emit_partial(p, complete=False)
                n += 1
        return n

    # -- bad input -------------------------------------------------------------------------------
    def _dead_letter(self, tag: str, bad: Bad, n: int, refused: bool = False) -> None:
        """One dead-letter entry for the bad entries of a message (the first MAX_BAD_KEPT of
        them); each is counted by its reason.

        The reason text has no numbers in it (the dead letter warns once per reason); how many
        entries, of how many, is in the entry's origin."""
        reason = bad[0][0]
        try:
            raw = msgpack.packb([e for _, e in bad], default=str, unicode_errors="surrogateescape")
        except Exception:  # too deep for the packer: keep what can be shown
            try:
                raw = repr(bad)[: 1 << 16].encode("utf-8", "replace")
            except Exception:
                raw = b"(entries too deeply nested to be shown)"
        what = (
            "no entry of the message could be read; not acknowledged, connection closed"
            if refused
            else "bad entries set aside; the other entries of their message were delivered"
        )
        self.intake.ctx.deadletter.raw(  # counts one error for ``reason``
            self.intake.name,
            f"{reason}: {what}",
            raw,
            peer=self.peer,
            tag=tag,
            entries=bad.count,
            of=n,
            format="msgpack array of the bad [time, record] entries",
        )
        reasons = Counter(bad.reasons)
        reasons[reason] -= 1  # (counted by the dead letter)
        for r, k in reasons.items():
            if k:
                self.intake.error(r, k)

    def _unreadable(self, tag: str, mode: str, bad: Bad, chunk: str | None) -> None:
        """Refuse a message none of whose entries could be read (raises :class:`Unreadable`)."""
        reason = bad[0][0]
        self._dead_letter(tag, bad, bad.count, refused=True)
        self.intake.error("unreadable_message")
        shape = _shape(bad[0][1])
        self.intake.say.error(  # (an ERROR: a client keeps resending it)
            f"unreadable:{reason}",
            "refused a %s message from %s (tag %r, %d entr%s%s): no entry could be read (%s), e.g. %s; "
            "the connection is closed without an ack, so the client keeps the data",
            mode,
            self.peer,
            tag,
            bad.count,
            "y" if bad.count == 1 else "ies",
            f", chunk {chunk!r}" if chunk is not None else "",
            reason,
            shape,
        )
        raise Unreadable(reason, f"no entry of a {mode} message could be read: {shape}")


def _header(h: list[Any]) -> tuple[Any, Any]:
    """Fluent Bit's entry header ``[time, metadata]``."""
    if len(h) != 2:
        raise ForwardError("bad entry", "an entry header must be [time, metadata]")
    return h[0], h[1]


def _shape(v: Any, depth: int = 0) -> str:
    """The wire types of an entry, e.g. ``[[ext 0 (EventTime), map], map]`` (what a person needs
    to see to know which client setting sends it)."""
    t = type(v)
    if t is list:
        if depth >= 3:
            return "[...]"
        inner = ", ".join(_shape(x, depth + 1) for x in v[:4])
        return f"[{inner}{', ...' if len(v) > 4 else ''}]"
    if t is dict:
        return "map"
    if t is Stamp:
        return "ext 0 (EventTime)"
    if t is msgpack.Timestamp:
        return f"ext -1 (timestamp, {v.seconds} s)"
    if t is Undecodable:
        return f"undecodable ({v.detail})"
    if t is str:
        return f"str {v[:20]!r}"
    if t in (int, float):
        return f"{t.__name__} {v!r}"
    return t.__name__.lower()


class Bad(list[tuple[str, Any]]):
    """The bad entries of one message: the first MAX_BAD_KEPT kept, every one counted (made
    for every message: nothing is done before the first bad entry)."""

    count = 0
    reasons: Counter[str] | None = None

    def append(self, item: tuple[str, Any]) -> None:
        self.count += 1
        if self.reasons is None:
            self.reasons = Counter()
        self.reasons[item[0]] += 1
        if len(self) < MAX_BAD_KEPT:
            super().append(item)
