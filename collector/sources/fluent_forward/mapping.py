"""A decoded forward record mapped to the fields of the json-file source's records.

    Docker's fluentd driver   container_id, container_name (/name), source, log, partial_*
                              -> container.id, container.name, stream, message
    any other client          message (or log) -> message, stream -> stream
                              level (severity, lvl, loglevel) -> log.level, log.syslog.severity
                              (collector/levels.py; a level it does not know stays as it was)
                              host or hostname (a string) -> host.name
    Fluent Bit's metadata     ``[[time, metadata], record]`` (or option ``metadata`` in Message
                              mode): OpenTelemetry's trace_id, span_id -> trace.id, span.id,
                              severity_number/_text -> log.level ...; the rest -> fluent.metadata
    every other key           top level, or under ``fluent.`` when it is one of ours
                              (``event.place_extra``)

``host.name`` is the sender: the record's ``host``/``hostname``, else the hostname the client
gave in the shared-key handshake (Fluent Bit's ``self_hostname``), else this host for a local
client (loopback, Unix socket) and the peer's address for a remote one.  This collector is
``observer.hostname``.

A message longer than ``max_record_bytes`` is cut there and flagged ``truncated``.  The split
lines of Docker's driver (``partial_message``) go to the reader's rejoin buffer (records.py).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from collector import levels
from collector.codecs.forward import ForwardError, clean, text
from collector.event import place_extra
from collector.sources.fluent_forward.intake import Group, GroupKey, Intake, Unit

DOCKER_KEYS = frozenset({"container_id", "container_name", "source", "log"})
DOCKER_OWN = DOCKER_KEYS | {"partial_message", "partial_id", "partial_ordinal", "partial_last"}
LEVEL_KEYS = ("level", "severity", "lvl", "loglevel", "log_level")
HOST_KEYS = ("host", "hostname")
NO_NAME = frozenset({"", "localhost", "localhost.localdomain"})  # Fluent Bit's default self_hostname


class RecordMapping:
    """How a record becomes an event in the unit being filled: mixed into
    :class:`~collector.sources.fluent_forward.records.ConnectionReader`, which owns the unit, the
    sender's host and the rejoin buffer of split lines (``_partial``)."""

    intake: Intake
    unit: Unit
    host: str  # host.name of records that do not say theirs
    max_record: int

    if TYPE_CHECKING:

        def _partial(
            self, key: GroupKey, stream: str, ev: dict[str, Any], part: str, rid: str, rec: dict[str, Any]
        ) -> None: ...

    def _record(self, tag: str, ts: str, rec: Any, rid: str, meta: Any = None) -> None:
        if type(rec) is not dict:
            raise ForwardError("bad record", f"a record must be a map, not {type(rec).__name__}")
        unit = self.unit
        if meta:
            if type(meta) is not dict:
                raise ForwardError("bad metadata", f"metadata must be a map, not {type(meta).__name__}")
        elif rec.keys() == DOCKER_KEYS:  # Docker's fluentd driver, a whole line: the fast path
            cid = rec["container_id"]
            name = rec["container_name"]
            msg = rec["log"]
            src = rec["source"]
            if type(cid) is str and type(name) is str and type(msg) is str and type(src) is str and cid:
                ev: dict[str, Any] = {"@timestamp": ts, "message": text(msg), "stream": text(src)}
                if len(msg) * 4 > self.max_record:
                    self._cap(ev)
                self._add(unit, (tag, cid, name, self.host), ev, rid, len(msg))
                return
        cid = rec.get("container_id")
        if type(cid) is str and cid:
            self._docker(tag, ts, rec, rid, cid, meta)
            return
        msg_key = "message" if "message" in rec else "log"
        msg = rec.get(msg_key)
        ev = {"@timestamp": ts}
        used: list[str] = []
        if type(msg) is str:
            ev["message"] = text(msg)
            used.append(msg_key)
        stream = rec.get("stream")
        if type(stream) is str:
            ev["stream"] = text(stream)
            used.append("stream")
        host = self._said(rec, ev, used)
        extra = {k: v for k, v in rec.items() if k not in used} if used else rec
        if extra:
            place_extra(ev, clean(extra), "fluent")
        if meta:
            _metadata(ev, meta)
        if type(msg) is str and len(msg) * 4 > self.max_record:
            self._cap(ev)
        self._add(unit, (tag, None, None, host), ev, rid, len(msg) if type(msg) is str else 64)

    def _said(self, rec: dict[str, Any], ev: dict[str, Any], used: list[str]) -> str:
        """What the record says of its level and host: into ``ev`` (level), the host returned,
        their keys added to ``used``."""
        for k in LEVEL_KEYS:
            v = rec.get(k)
            if v is not None:
                c = levels.code(v) if type(v) is not bool else None
                if c is not None:
                    _set_log(ev, levels.fields(c))
                    used.append(k)
                break
        for k in HOST_KEYS:
            v = rec.get(k)
            if type(v) is str and v.strip():
                used.append(k)
                return v
        return self.host

    def _add(self, unit: Unit, key: GroupKey, ev: dict[str, Any], rid: str, size: int) -> None:
        g = unit.groups.get(key)
        if g is None:
            g = unit.groups[key] = Group(key, self.intake.fields(key))
        g.events.append(ev)
        g.ids.append(rid)
        g.nbytes += size + 64
        unit.nbytes += size + 64
        unit.count += 1

    def _cap(self, ev: dict[str, Any]) -> None:
        msg = ev["message"]
        raw = msg.encode()
        if len(raw) > self.max_record:
            ev["message"] = raw[: self.max_record].decode("utf-8", "ignore")
            flag(ev, "truncated")

    def _docker(self, tag: str, ts: str, rec: dict[str, Any], rid: str, cid: str, meta: Any = None) -> None:
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
        used: list[str] = []
        host = self._said(rec, ev, used)
        extra = {k: v for k, v in rec.items() if k not in DOCKER_OWN and k not in used}
        if type(msg) is not str:
            if msg is not None:
                extra["log"] = msg
            msg = ""
        if extra:
            place_extra(ev, clean(extra), "fluent")
        if meta:
            _metadata(ev, meta)
        key = (tag, cid, name, host)  # the same group as the fast path's: one batch, stream order kept
        if rec.get("partial_message") in ("true", True):
            self._partial(key, stream, ev, text(msg), rid, rec)
            return
        ev["message"] = text(msg)
        if len(msg) * 4 > self.max_record:
            self._cap(ev)
        self._add(self.unit, key, ev, rid, len(msg))


def _set_log(ev: dict[str, Any], fields: dict[str, Any]) -> None:
    lg = ev.get("log")
    if type(lg) is dict:
        lg.update(fields)
    else:
        ev["log"] = fields


def _metadata(ev: dict[str, Any], meta: dict[Any, Any]) -> None:
    """Fluent Bit's record metadata: what has an ECS meaning mapped, the rest under
    ``fluent.metadata``.  Its OpenTelemetry input keeps ``otlp: {trace_id, span_id,
    severity_number, severity_text, attributes, ...}`` there."""
    rest = dict(meta)
    otlp = rest.get("otlp")
    if type(otlp) is dict:
        otlp = dict(otlp)
        for key, field in (("trace_id", "trace"), ("span_id", "span")):
            v = otlp.get(key)
            if type(v) is bytes and v:
                ev.setdefault(field, {"id": v.hex()})
                del otlp[key]
            elif type(v) is str and v:
                ev.setdefault(field, {"id": text(v)})
                del otlp[key]
        c = levels.from_otel(otlp.get("severity_number"))
        if c is None:
            c = levels.code(otlp.get("severity_text"))
        if c is not None:
            _set_log(ev, levels.fields(c))
            otlp.pop("severity_number", None)
            otlp.pop("severity_text", None)
        if otlp:
            rest["otlp"] = otlp
        else:
            del rest["otlp"]
    if rest:
        f = ev.get("fluent")
        if type(f) is not dict:
            f = ev["fluent"] = {}
        f["metadata"] = clean(rest)


def sender(peer: str, own: str) -> str:
    """host.name for a client that does not say its own: this host for a local one, else its address."""
    addr = peer[1 : peer.find("]")] if peer.startswith("[") else peer.rsplit(":", 1)[0]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return own  # a Unix socket: a client on this host
    return own if ip.is_loopback else str(ip)


def flag(ev: dict[str, Any], flag: str) -> None:
    logf = ev.get("log")
    if not isinstance(logf, dict):
        logf = ev["log"] = {}
    flags = logf.setdefault("flags", [])
    if flag not in flags:
        flags.append(flag)
