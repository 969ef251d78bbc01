"""systemd's Journal Export Format (what ``journalctl -o export`` writes), read incrementally.

Entries are separated by an empty line; each field is ``NAME=value\\n``, or, when the value is
not plain text (a newline, binary data), ``NAME\\n`` then its size as a little-endian 64-bit
integer, the bytes and ``\\n``.  Field values are kept as bytes (a MESSAGE may be any bytes).
An entry larger than ``max_entry_bytes`` is not kept: its fields are skipped as they stream by
and it is returned as an :class:`Oversize` with the fields read before the limit was reached
(the ``__CURSOR``, which journalctl writes first, among them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Entry = dict[str, bytes]


@dataclass(slots=True)
class Oversize:
    fields: Entry = field(default_factory=dict)
    size: int = 0


class ExportReader:
    __slots__ = ("_buf", "_entry", "_size", "_skip", "_skip_line", "_too_big", "max_entry_bytes")

    def __init__(self, max_entry_bytes: int) -> None:
        self.max_entry_bytes = max_entry_bytes
        self._buf = bytearray()
        self._entry: Entry = {}
        self._size = 0
        self._too_big = False
        self._skip = 0  # bytes of a binary field (and its newline) still to discard
        self._skip_line = False  # discarding a text field up to its newline

    def feed(self, data: bytes) -> list[Entry | Oversize]:
        out: list[Entry | Oversize] = []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        if self._skip_line:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            self._skip_line = False
            data = data[nl + 1 :]
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        limit = self.max_entry_bytes
        while pos < n:
            if buf[pos] == 10:  # an empty line: the entry is complete
                if self._entry or self._too_big:
                    out.append(Oversize(self._entry, self._size) if self._too_big else self._entry)
                self._entry, self._size, self._too_big = {}, 0, False
                pos += 1
                continue
            nl = buf.find(b"\n", pos)
            eq = buf.find(b"=", pos, nl if nl >= 0 else n)
            if eq >= 0:  # NAME=value
                if nl < 0:
                    if n - pos > limit + 4096:  # a text field longer than any entry may be
                        self._too_big = True
                        self._size += n - pos
                        self._skip_line = True
                        pos = n
                    break
                size = nl - pos
                self._add(bytes(buf[pos:eq]).decode("ascii", "replace"), buf, eq + 1, nl, size)
                pos = nl + 1
                continue
            if nl < 0:
                if n - pos > 4096:
                    raise ValueError(f"not the journal export format: {bytes(buf[pos : pos + 60])!r}")
                break
            if n - nl - 1 < 8:
                break
            size = int.from_bytes(buf[nl + 1 : nl + 9], "little")
            name = bytes(buf[pos:nl]).decode("ascii", "replace")
            start = nl + 9
            if self._size + size > limit:
                self._too_big = True
                self._size += size
                have = n - start
                if have >= size + 1:
                    pos = start + size + 1
                    continue
                self._skip = size + 1 - have
                pos = n
                break
            if n - start < size + 1:
                break
            self._add(name, buf, start, start + size, size)
            pos = start + size + 1
        del buf[:pos]
        return out

    def _add(self, name: str, buf: bytearray, start: int, end: int, size: int) -> None:
        self._size += size
        if self._too_big:
            return
        if self._size > self.max_entry_bytes:
            self._too_big = True
            return
        self._entry[name] = bytes(buf[start:end])
