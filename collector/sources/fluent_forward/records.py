"""From decoded forward messages to records: mapping, split lines, bad entries.

One :class:`Decoder` per connection turns the msgpack stream into units of records
(intake.py makes them batches).  Records map to the same fields as the json-file source:

    Docker's fluentd driver   container_id, container_name (/name), source, log, partial_*
                              -> container.id, container.name, stream, message
    any other client          message (or log) -> message, stream -> stream
    every other key           top level, or under ``fluent.`` when it is one of ours
                              (``event.place_extra``)

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

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from collector.codecs.forward import (
    ForwardError,
    Framer,
    TimeFormatter,
    clean,
    packed_entries,
    split_message,
    text,
)
from collector.event import place_extra
from collector.sources.fluent_forward.intake import ChunkAck, Group, GroupKey, Intake, Unit

DOCKER_KEYS = frozenset({"container_id", "container_name", "source", "log"})
DOCKER_OWN = DOCKER_KEYS | {"partial_message", "partial_id", "partial_ordinal", "partial_last"}
MAX_PENDING_PARTIALS = 256  # split lines being rejoined on one connection (Docker: 2, stdout and stderr)
YIELD_EVERY = 4096  # entries (good or bad) decoded before the event loop gets a turn
MAX_BAD_KEPT = 100  # bad entries of one message kept for the dead letter (the rest only counted)
MAX_BAD_ENTRIES = 10_000  # a message with more bad than good entries past this is refused as a whole


class Partial:
    """A line Docker split, being rejoined."""

    __slots__ = ("event", "first", "group", "parts", "pid", "rid", "size", "truncated")

    def __init__(self, pid: str, group: GroupKey, event: dict[str, Any], rid: str) -> None:
        self.pid = pid
        self.group = group
        self.event = event  # timestamp, stream and extras of the first part
        self.rid = rid
        self.parts: list[tuple[int, str]] = []
        self.size = 0
        self.truncated = False
        self.first = time.monotonic()


class Decoder:
    """The stateful decoder of one connection."""

    def __init__(self, intake: Intake, peer: str, send_ack: Callable[[str], None]) -> None:
        cfg = intake.config
        self.intake = intake
        self.peer = peer
        self.send_ack = send_ack
        self.times = TimeFormatter()
        self.max_bytes = cfg.max_message_bytes
        self.max_decompressed = cfg.max_decompressed_bytes
        self.max_record = cfg.max_record_bytes
        self.max_events = cfg.max_batch_events
        self.framer = Framer(self.max_bytes, self.times)  # decodes nothing before it is whole
        self.unit = Unit()
        self.partials: dict[tuple[str, str], Partial] = {}
        self._prefix = uuid.uuid4().hex[:20] + "-"
        self._seq = 0
        self.open_chunks = 0  # chunks whose ack is not sent yet

    def _chunk_done(self, chunk: str) -> None:
        self.open_chunks -= 1
        self.send_ack(chunk)

    # -- input ----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.framer.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes received after the last complete message (one still arriving)."""
        return self.framer.buffered

    def next_object(self) -> Any:
        """One decoded object, or StopIteration (the handshake reads PING this way)."""
        return next(self.framer)

    def take(self) -> Unit:
        u, self.unit = self.unit, Unit()
        return u

    def units(self) -> Iterator[Unit]:
        """Decode everything buffered; yields a unit whenever ``max_batch_events`` are ready.

        What is left in ``self.unit`` afterwards is for the caller to :meth:`take`.
        """
        limit = self.max_events
        for msg in self.framer:
            tag, mode, payload, options = split_message(msg)
            tag = text(tag)
            chunk = options.get("chunk")
            waiter = None
            if chunk is not None:
                if type(chunk) is not str:
                    raise ForwardError("bad option", "chunk must be a string")
                waiter = ChunkAck(chunk, self._chunk_done)
                self.open_chunks += 1
                self.unit.hold(waiter)
            bad = Bad()
            if mode == "message":
                self._message(tag, payload, chunk, bad)
                n = 1
            else:
                entries = payload
                if mode == "packed":
                    entries = packed_entries(payload, options, self.times, self.max_decompressed)
                n = yield from self._entries(tag, entries, chunk, waiter, bad)
            if bad:
                self._dead_letter(tag, bad)
            size = options.get("size")
            if size is not None and size != n:
                self.intake.error("size_mismatch")
                self.intake.warn("size_mismatch", "%s said size=%r for %d event(s) (tag %r)", self.peer, size, n, tag)
            if waiter is not None:
                waiter.release()
            if self.unit.count >= limit:
                yield self.take()

    # -- messages --------------------------------------------------------------------------------
    def _message(self, tag: str, entry: tuple[Any, Any], chunk: str | None, bad: Bad) -> None:
        t, rec = entry
        try:
            ts = self.times.any(t)
            self._record(tag, ts, rec, f"{text(chunk)}-0" if chunk is not None else self._next_id())
        except ForwardError as e:
            bad.append((e.reason, [t, rec]))

    def _entries(self, tag: str, entries: Any, chunk: str | None, waiter: ChunkAck | None, bad: Bad) -> Iterator[Unit]:
        """Add every ``[time, record]`` of a Forward/PackedForward message; yields the current
        unit whenever it is full, or every YIELD_EVERY entries (the loop gets a turn); returns
        the number of entries."""
        limit = self.max_events
        unit = self.unit
        any_time = self.times.any
        record = self._record
        cid = text(chunk) if chunk is not None else None  # ids are JSON text; the ack echoes the chunk as sent
        i = 0
        for entry in entries:
            try:
                if type(entry) is not list or len(entry) != 2:
                    raise ForwardError("bad entry", "an entry must be [time, record]")
                rid = f"{cid}-{i}" if cid is not None else self._next_id()
                record(tag, any_time(entry[0]), entry[1], rid)
            except ForwardError as e:
                bad.append((e.reason, entry))
                if bad.count > MAX_BAD_ENTRIES and bad.count > i - bad.count:
                    raise ForwardError("too many bad entries", f"{bad.count} of the first {i + 1}") from None
            i += 1
            if unit.count >= limit or not i % YIELD_EVERY:
                yield self.take()
                unit = self.unit
                if waiter is not None:
                    unit.hold(waiter)
        return i

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._prefix}{self._seq:x}"

    # -- records -------------------------------------------------------------------------------
    def _record(self, tag: str, ts: str, rec: Any, rid: str) -> None:
        if type(rec) is not dict:
            raise ForwardError("bad record", f"a record must be a map, not {type(rec).__name__}")
        unit = self.unit
        if rec.keys() == DOCKER_KEYS:  # Docker's fluentd driver, a whole line: the fast path
            cid = rec["container_id"]
            name = rec["container_name"]
            msg = rec["log"]
            src = rec["source"]
            if type(cid) is str and type(name) is str and type(msg) is str and type(src) is str and cid:
                ev: dict[str, Any] = {"@timestamp": ts, "message": text(msg), "stream": text(src)}
                if len(msg) * 4 > self.max_record:
                    self._cap(ev)
                self._add(unit, (tag, cid, name), ev, rid, len(msg))
                return
        cid = rec.get("container_id")
        if type(cid) is str and cid:
            self._docker(tag, ts, rec, rid, cid)
            return
        msg_key = "message" if "message" in rec else "log"
        msg = rec.get(msg_key)
        ev = {"@timestamp": ts}
        used: tuple[str, ...] = ()
        if type(msg) is str:
            ev["message"] = text(msg)
            used = (msg_key,)
        stream = rec.get("stream")
        if type(stream) is str:
            ev["stream"] = text(stream)
            used = (*used, "stream")
        extra = {k: v for k, v in rec.items() if k not in used} if used else rec
        if extra:
            place_extra(ev, clean(extra), "fluent")
        if type(msg) is str and len(msg) * 4 > self.max_record:
            self._cap(ev)
        self._add(unit, (tag, None, None), ev, rid, len(msg) if type(msg) is str else 64)

    def _add(self, unit: Unit, key: GroupKey, ev: dict[str, Any], rid: str, size: int) -> None:
        g = unit.groups.get(key)
        if g is None:
            g = unit.groups[key] = Group(key, self.intake.fields(key))
        g.events.append(ev)
        g.ids.append(rid)
        g.nbytes += size + 64
        unit.count += 1

    def _cap(self, ev: dict[str, Any]) -> None:
        msg = ev["message"]
        raw = msg.encode()
        if len(raw) > self.max_record:
            ev["message"] = raw[: self.max_record].decode("utf-8", "ignore")
            _flag(ev, "truncated")

    def _docker(self, tag: str, ts: str, rec: dict[str, Any], rid: str, cid: str) -> None:
        """A Docker record with extra fields (labels, env) and/or split-line fields."""
        name = rec.get("container_name")
        if type(name) is not str:
            name = None
        msg = rec.get("log")
        src = rec.get("source")
        ev: dict[str, Any] = {"@timestamp": ts}
        stream = text(src) if type(src) is str else ""
        if stream:
            ev["stream"] = stream
        extra = {k: v for k, v in rec.items() if k not in DOCKER_OWN}
        if type(msg) is not str:
            if msg is not None:
                extra["log"] = msg
            msg = ""
        if extra:
            place_extra(ev, clean(extra), "fluent")
        key = (tag, cid, name)  # the same group as the fast path's: one batch, stream order kept
        if rec.get("partial_message") in ("true", True):
            self._partial(key, stream, ev, text(msg), rid, rec)
            return
        ev["message"] = text(msg)
        if len(msg) * 4 > self.max_record:
            self._cap(ev)
        self._add(self.unit, key, ev, rid, len(msg))

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
            p = self.partials[slot] = Partial(pid, key, ev, rid)
        if ordinal < 0:
            ordinal = len(p.parts) + 1
        if not p.truncated:
            room = self.max_record - p.size
            if len(part) * 4 <= room or len(part.encode()) <= room:
                p.parts.append((ordinal, part))
                p.size += len(part) if part.isascii() else len(part.encode())
            else:
                p.parts.append((ordinal, part.encode()[:room].decode("utf-8", "ignore")))
                p.size = self.max_record
                p.truncated = True
        if last:
            del self.partials[slot]
            self._emit_partial(p, complete=True)

    def _emit_partial(self, p: Partial, complete: bool) -> None:
        parts = sorted(p.parts, key=lambda x: x[0])
        ev = p.event
        ev["message"] = "".join(t for _, t in parts)
        if complete and not p.truncated and [o for o, _ in parts] != list(range(1, len(parts) + 1)):
            complete = False  # a part is missing (e.g. we started listening mid-line)
        if p.truncated:
            _flag(ev, "truncated")
        if not complete:
            _flag(ev, "incomplete")
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
    def _dead_letter(self, tag: str, bad: Bad) -> None:
        """One dead-letter entry for the bad entries of a message; each is counted by its reason."""
        reason = bad[0][0]
        try:
            raw = msgpack.packb([e for _, e in bad], default=str, unicode_errors="surrogateescape")
        except Exception:  # too deep for the packer: keep what can be shown
            try:
                raw = repr(bad)[: 1 << 16].encode("utf-8", "replace")
            except Exception:
                raw = b"(entries too deeply nested to be shown)"
        self.intake.ctx.deadletter.raw(  # counts one error for ``reason``
            self.intake.name,
            f"{reason}: {bad.count} event(s) set aside (the rest of the message was accepted)"
            + (f"; the first {len(bad)} kept here" if bad.count > len(bad) else ""),
            raw,
            peer=self.peer,
            tag=tag,
            format="msgpack array of the bad [time, record] entries",
        )
        reasons = bad.reasons or Counter()
        reasons[reason] -= 1  # (counted by the dead letter)
        for r, n in reasons.items():
            if n:
                self.intake.error(r, n)


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


def _flag(ev: dict[str, Any], flag: str) -> None:
    logf = ev.get("log")
    if not isinstance(logf, dict):
        logf = ev["log"] = {}
    flags = logf.setdefault("flags", [])
    if flag not in flags:
        flags.append(flag)
