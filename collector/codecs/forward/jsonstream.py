"""Forward messages written as JSON, one after another (what Fluentd's in_forward reads from a
connection that starts with ``[``, and fluent-logger-golang sends with ``MarshalAsJSON``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from collector.codecs.forward.errors import ForwardError


class JsonStream:
    """Forward messages written as JSON (``["tag",1714564800,{...},{"chunk":"..."}]`` back to
    back), which Fluentd's in_forward accepts when a connection starts with ``[`` and which
    fluent-logger-golang sends with ``MarshalAsJSON``; acks go back as JSON too."""

    def __init__(self, max_bytes: int) -> None:
        self.buf = bytearray()
        self.max_bytes = max_bytes
        self.scan = 0  # where the scan for the end of the current value goes on
        self.depth = 0
        self.in_str = False
        self.esc = False

    @property
    def pending(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> None:
        self.buf += data  # (bounded: iterating refuses a value still open past max_bytes)

    def __iter__(self) -> Iterator[Any]:
        while True:
            end = self._end()
            if end is None:
                if len(self.buf) > self.max_bytes:
                    raise ForwardError("message too large", f"a JSON message is larger than {self.max_bytes} bytes")
                return
            raw = bytes(self.buf[:end])
            del self.buf[:end]
            self.scan = 0
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ForwardError("not JSON", str(e)) from None
            yield msg

    def _end(self) -> int | None:
        """The end of the first complete JSON value in the buffer (None: not there yet)."""
        buf = self.buf
        i = self.scan
        n = len(buf)
        while i < n and self.depth == 0 and buf[i] in b" \t\r\n":  # between messages
            i += 1
        if self.depth == 0 and i:
            del buf[:i]
            n -= i
            i = 0
        depth, in_str, esc = self.depth, self.in_str, self.esc
        while i < n:
            c = buf[i]
            i += 1
            if in_str:
                if esc:
                    esc = False
                elif c == 0x5C:  # backslash
                    esc = True
                elif c == 0x22:
                    in_str = False
            elif c == 0x22:
                in_str = True
            elif c in (0x5B, 0x7B):
                depth += 1
            elif c in (0x5D, 0x7D):
                depth -= 1
                if depth <= 0:
                    self.depth, self.in_str, self.esc = 0, False, False
                    return i
            elif depth == 0:
                raise ForwardError("not JSON", f"unexpected {bytes([c])!r} between JSON messages")
        self.depth, self.in_str, self.esc, self.scan = depth, in_str, esc, i
        return None
