"""Docker's json-file log format: parse lines, rejoin the entries Docker split.

Each line dockerd writes is ``{"log":"...","stream":"stdout|stderr"[,"attrs":{...}],"time":"RFC3339Nano"}``.
A message longer than 16 KB is written as several entries; every one but the last has a
``log`` that does not end with a newline.  stdout and stderr entries may interleave, so
parts are rejoined per stream.

:class:`LineReader` turns a chunk of bytes read at a known offset into records, keeping:

* torn lines (no newline yet: the writer is mid-line) for the next read, unconsumed;
* malformed lines (bad JSON, invalid UTF-8, wrong shape) out of the output, reported with
  their offset;
* a per-stream partial line until its last part arrives, capped at ``max_record_bytes``
  (beyond it the message is truncated and flagged ``log.flags: ["truncated"]``);
* Docker's ``attrs`` (labels and env the log driver copies into each line), each value capped
  at ``max_field_bytes`` and keys at 256 bytes (flagged ``log.flags: ["fields_truncated"]``).

``safe_offset`` is how far the file can be checkpointed: never past the first part of a line
still being rejoined, so a restart rejoins it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.codecs.partial import PartialLine

NEWLINE = b"\n"
MAX_ATTR_KEY_BYTES = 256


@dataclass(slots=True)
class Partial(PartialLine):
    offset: int  # where the first part starts
    time: str


@dataclass(slots=True)
class Bad:
    offset: int
    raw: bytes
    reason: str


@dataclass(slots=True)
class Parsed:
    """Records of one chunk, as parallel lists (offsets are the ids' origin)."""

    times: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    flags: dict[int, list[str]] = field(default_factory=dict)  # index -> log.flags
    attrs: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> docker attrs
    bad: list[Bad] = field(default_factory=list)
    consumed: int = 0  # bytes of the chunk fully consumed (complete lines)

    def __len__(self) -> int:
        return len(self.messages)


_COLLIDE = frozenset({"@timestamp", "message", "stream", "log", "docker"})


class DockerLines:
    """Records of one json-file read, kept as columns (see event.Columns).

    ``encode`` writes each document with one format operation: no dict per record, the file
    path encoded once, the batch's shared fields spliced in as bytes.
    """

    __slots__ = ("_file_json", "attrs", "flags", "messages", "offsets", "path", "streams", "times")

    def __init__(self, parsed: Parsed, path: str) -> None:
        self.times = parsed.times
        self.messages = parsed.messages
        self.streams = parsed.streams
        self.offsets = parsed.offsets
        self.flags = parsed.flags
        self.attrs = parsed.attrs
        self.path = path
        self._file_json = orjson.dumps({"path": path})

    def __len__(self) -> int:
        return len(self.messages)

    def event(self, i: int, ref: dict[str, str]) -> dict[str, Any]:
        log: dict[str, Any] = {"offset": self.offsets[i], "file": ref}
        ev: dict[str, Any] = {
            "@timestamp": self.times[i],
            "message": self.messages[i],
            "stream": self.streams[i],
            "log": log,
        }
        if i in self.flags:
            log["flags"] = self.flags[i]
        attrs = self.attrs.get(i)
        if isinstance(attrs, dict):
            ev["docker"] = {"attrs": {k.replace(".", "_"): v for k, v in attrs.items()}}
        return ev

    def events(self) -> list[dict[str, Any]]:
        ref = {"path": self.path}
        return [self.event(i, ref) for i in range(len(self.messages))]

    def encode(self, meta: Any) -> list[bytes]:
        from collector.event import encode_record  # noqa: PLC0415 - event imports nothing from codecs

        if not meta.keys.isdisjoint(_COLLIDE):
            return [encode_record(ev, meta) for ev in self.events()]
        dumps = orjson.dumps
        tail = (b"," + meta.encoded[1:]) if meta.keys else b"}"
        file_json = self._file_json
        fmt = b'{"@timestamp":%s,"message":%s,"stream":%s,"log":{"offset":%d,"file":%s}%s'
        out = [
            fmt % (dumps(t), dumps(m), dumps(st), o, file_json, tail)
            for t, m, st, o in zip(self.times, self.messages, self.streams, self.offsets, strict=True)
        ]
        if self.flags or self.attrs:  # rare: redo those records the general way
            ref = {"path": self.path}
            for i in {*self.flags, *self.attrs}:
                out[i] = encode_record(self.event(i, ref), meta)
        return out


class LineReader:
    """Stateful parser of one json-file (state: partial lines per stream)."""

    def __init__(self, max_record_bytes: int = 1 << 20, max_field_bytes: int = 4096) -> None:
        self.max_record_bytes = max_record_bytes
        self.max_field_bytes = max_field_bytes
        self.pending: dict[str, Partial] = {}

    def safe_offset(self, position: int) -> int:
        """``position`` (end of consumed data) held back to the first pending partial."""
        if not self.pending:
            return position
        return min(position, *(p.offset for p in self.pending.values()))

    def reset(self) -> None:
        self.pending.clear()

    def flush(self, out: Parsed) -> None:
        """Emit every pending partial as it is, flagged (the file ended mid-line for good)."""
        for stream, p in sorted(self.pending.items(), key=lambda kv: kv[1].offset):
            self._emit_partial(out, stream, p, final=False)
        self.pending.clear()

    def _emit_partial(self, out: Parsed, stream: str, p: Partial, final: bool) -> None:
        out.times.append(p.time)
        out.messages.append(p.text())
        out.streams.append(stream)
        out.offsets.append(p.offset)
        flags = []
        if p.truncated:
            flags.append("truncated")
        if not final:
            flags.append("incomplete")
        if flags:
            out.flags[len(out.messages) - 1] = flags

    def parse(self, data: bytes, offset: int) -> Parsed:
        """Parse complete lines of ``data`` (read at file ``offset``)."""
        out = Parsed()
        end = data.rfind(NEWLINE)
        if end < 0:
            return out
        out.consumed = end + 1
        lines = data[: end + 1].split(NEWLINE)
        lines.pop()  # the empty string after the last newline
        loads = orjson.loads
        times, messages, streams, offsets = out.times, out.messages, out.streams, out.offsets
        pending = self.pending
        pos = offset
        for line in lines:
            here = pos
            pos += len(line) + 1
            try:
                d = loads(line)
                log = d["log"]
                stream = d.get("stream", "")
                t = d["time"]
                if type(log) is not str or type(t) is not str or type(stream) is not str:
                    raise TypeError("log, stream and time must be strings")
            except orjson.JSONDecodeError as e:
                if not line.strip():
                    continue  # blank line (e.g. NUL padding after a crash is not blank: reported)
                out.bad.append(Bad(here, line, _reason(e, line)))
                continue
            except (KeyError, TypeError) as e:
                out.bad.append(Bad(here, line, f"not a Docker json-file entry: {_shape(e)}"))
                continue
            if log[-1:] == "\n":
                p = pending.pop(stream, None) if pending else None
                if p is None:
                    times.append(t)
                    messages.append(log[:-1])
                    streams.append(stream)
                    offsets.append(here)
                    if "attrs" in d:
                        attrs = d["attrs"]
                        if type(attrs) is dict and len(line) > self.max_field_bytes and not self._fits(attrs):
                            attrs = _capped(attrs, self.max_field_bytes)
                            out.flags[len(messages) - 1] = ["fields_truncated"]
                        out.attrs[len(messages) - 1] = attrs
                else:
                    p.add(log[:-1], self.max_record_bytes)
                    self._emit_partial(out, stream, p, final=True)
                continue
            # a part of a longer line (or a last line without newline, which Docker never writes)
            p = pending.get(stream)
            if p is None:
                p = pending[stream] = Partial(here, t)
            p.add(log, self.max_record_bytes)
        return out

    def _fits(self, attrs: dict[str, Any]) -> bool:
        """Whether no key or value of ``attrs`` is over the caps."""
        limit = self.max_field_bytes
        for k, v in attrs.items():
            if len(k) * 4 > MAX_ATTR_KEY_BYTES and len(k.encode()) > MAX_ATTR_KEY_BYTES:
                return False
            if type(v) is str and len(v) * 4 > limit and len(v.encode()) > limit:
                return False
        return True


def _capped(attrs: dict[str, Any], limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if len(k.encode()) > MAX_ATTR_KEY_BYTES:
            continue
        if type(v) is str and len(v.encode()) > limit:
            v = v.encode()[:limit].decode("utf-8", "ignore")  # noqa: PLW2901
        out[k] = v
    return out


def _reason(e: orjson.JSONDecodeError, line: bytes) -> str:
    msg = str(e)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return "invalid UTF-8"
    return f"bad JSON: {msg}"


def _shape(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return str(e)
