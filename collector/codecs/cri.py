"""The CRI log format (containerd, CRI-O: what kubelet reads under ``/var/log/pods``).

Each line is ``<RFC3339Nano time> <stdout|stderr> <tags> <message>``; the tags are ``F`` (a full
line, or the last part of a long one) or ``P`` (a part: the runtime split a line longer than its
buffer, 16 KiB by default, and the rest follows), possibly followed by more tags after ``:``.
The message is the container's raw output: bytes, not JSON.

:class:`CriLineReader` reads it like :class:`~collector.codecs.docker_json.LineReader` reads
json-file (the same :class:`Parsed` out, so records have the same shape): torn lines wait,
``P`` parts are rejoined per stream until the ``F`` line (capped at ``max_record_bytes``:
truncated and flagged ``log.flags: ["truncated"]``), malformed lines are set aside with their
offset, and ``safe_offset`` never passes the first part of a line being rejoined.

Invalid UTF-8 in a message is replaced by U+FFFD, as Docker's json-file driver does when it
writes the line (a program printing Latin-1 is not bad input, and loses no other character).
"""

from __future__ import annotations

import re

from collector.codecs.docker_json import NEWLINE, Bad, LineReader, Parsed, Partial

# RFC 3339 with optional fraction (RFC3339Nano drops trailing zeros) and a zone; containerd and
# CRI-O write the node's local offset when it is not UTC
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)\Z")
_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}


class CriLineReader(LineReader):
    """Stateful parser of one CRI log file (state: partial lines per stream)."""

    def parse(self, data: bytes, offset: int) -> Parsed:
        """Parse complete lines of ``data`` (read at file ``offset``)."""
        out = Parsed()
        end = data.rfind(NEWLINE)
        if end < 0:
            return out
        out.consumed = end + 1
        lines = data[:end].split(NEWLINE)
        times, messages, streams, offsets = out.times, out.messages, out.streams, out.offsets
        pending = self.pending
        time_ok = _TIME.match
        pos = offset
        for line in lines:
            here = pos
            pos += len(line) + 1
            fields = line.split(b" ", 3)
            if len(fields) == 3 and fields[2]:
                fields.append(b"")  # "<time> <stream> F": an empty line written without its space
            if len(fields) != 4 or fields[1] not in _STREAMS:
                if line.strip():
                    out.bad.append(Bad(here, line, _shape(line, fields)))
                continue
            t, s, tag, raw = fields
            stream = _STREAMS[s]
            if tag == b"F":
                partial = False
            elif tag == b"P":
                partial = True
            else:
                first = tag.split(b":", 1)[0]
                if first not in (b"F", b"P"):
                    out.bad.append(Bad(here, line, "not a CRI log line: tag is neither P nor F"))
                    continue
                partial = first == b"P"
            if not time_ok(t):
                out.bad.append(Bad(here, line, "not a CRI log line: time is not RFC 3339"))
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = raw.decode("utf-8", "replace")
            if partial:
                p = pending.get(stream)
                if p is None:
                    p = pending[stream] = Partial(here, t.decode())
                p.add(text, self.max_record_bytes)
                continue
            p = pending.pop(stream, None) if pending else None
            if p is None:
                times.append(t.decode())
                messages.append(text)
                streams.append(stream)
                offsets.append(here)
            else:
                p.add(text, self.max_record_bytes)
                self._emit_partial(out, stream, p, final=True)
        return out


def _shape(line: bytes, fields: list[bytes]) -> str:
    if line.startswith(b"{"):
        return "not a CRI log line: JSON (a json-file log? set format: json-file)"
    if len(fields) == 4:
        return "not a CRI log line: stream is neither stdout nor stderr"
    return "not a CRI log line: expected '<time> <stream> <P|F> <message>'"
