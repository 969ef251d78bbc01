"""One open log file: identity, reading position, and the records read from it.

A file is known by its *fingerprint*: a hash of its container directory and its first line
(Docker's first line carries a nanosecond timestamp, so it is unique, and it survives the
rename that rotation does).  Checkpoints and record ids (``<fingerprint>-<offset>``) use it,
so a file read again after a restart or a rotation yields the same ids.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from collector.acks import OrderedAcks
from collector.codecs.docker_json import LineReader, Parsed

FINGERPRINT_MAX = 256 << 10  # a first line longer than this is hashed on its first 256 KiB
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}\Z")
_ROTATED = re.compile(r"\.(\d+)\Z")


def container_id_of(path: str) -> str:
    """The container id when ``path`` sits in Docker's layout (``.../<id>/<id>-json.log``)."""
    parent = os.path.basename(os.path.dirname(path))
    return parent if _CONTAINER_ID.match(parent) else ""


def fingerprint(fd: int, salt: str) -> str | None:
    """Hex id of the file from its first complete line; None until one is written."""
    head = os.pread(fd, 4096, 0)
    nl = head.find(b"\n")
    if nl < 0:
        if len(head) < 4096:
            return None
        head = os.pread(fd, FINGERPRINT_MAX, 0)
        nl = head.find(b"\n")
        if nl < 0 and len(head) < FINGERPRINT_MAX:
            return None
    first = head[: nl + 1] if nl >= 0 else head
    return hashlib.blake2b(salt.encode() + b"\0" + first, digest_size=8).hexdigest()


def rotated_siblings(live: str) -> list[tuple[int, str]]:
    """Docker's rotated files of ``live`` (``x-json.log.1`` ...), as (number, path), oldest first.

    Compressed rotations (``.gz``, Docker's ``compress=true``) are not read.
    """
    d, base = os.path.split(live)
    out = []
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    for n in names:
        if n.startswith(base + "."):
            m = _ROTATED.search(n)
            if m and n == f"{base}.{m.group(1)}":
                out.append((int(m.group(1)), os.path.join(d, n)))
    out.sort(reverse=True)
    return out


@dataclass(eq=False)
class OpenFile:
    """A file we hold open and read; ``offset`` is where unconsumed data starts."""

    path: str  # the name it had when opened
    live: str  # the live path of its log stream (``.../<id>-json.log``)
    fd: int
    dev: int
    ino: int
    offset: int
    fp: str | None
    container_id: str
    reader: LineReader
    acks: OrderedAcks
    size: int = 0  # size at the last read
    rotated: bool = False  # no longer the live file: finish it, then close
    last_time: str = ""  # time of the last record read
    long_line: int = 0  # bytes of a line longer than the read size being skipped

    @classmethod
    def open(cls, path: str, live: str, offset: int, max_record_bytes: int) -> OpenFile:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            cid = container_id_of(live)
            fp = fingerprint(fd, cid or os.path.dirname(os.path.abspath(live)))
        except OSError:
            os.close(fd)
            raise
        return cls(
            path=path,
            live=live,
            fd=fd,
            dev=st.st_dev,
            ino=st.st_ino,
            offset=offset,
            fp=fp,
            container_id=cid,
            reader=LineReader(max_record_bytes),
            acks=OrderedAcks(offset),
            size=st.st_size,
        )

    def salt(self) -> str:
        return self.container_id or os.path.dirname(os.path.abspath(self.live))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, chunk: int, max_line: int) -> tuple[Parsed, int, bytes | None]:
        """Read and parse up to ``chunk`` bytes of complete lines.

        Returns (records, position after them, an over-long line skipped or None).
        """
        data = os.pread(self.fd, chunk, self.offset)
        if not data:
            return Parsed(), self.offset, None
        if self.fp is None:
            self.fp = fingerprint(self.fd, self.salt())
            if self.fp is None:
                return Parsed(), self.offset, None
        parsed = self.reader.parse(data, self.offset)
        if parsed.consumed == 0 and len(data) == chunk:
            # no newline in a whole chunk: a huge line; look further, up to max_line
            size = chunk
            while size < max_line:
                size = min(size * 4, max_line)
                data = os.pread(self.fd, size, self.offset)
                if len(data) < size or data.find(b"\n") >= 0:
                    parsed = self.reader.parse(data, self.offset)
                    break
            if parsed.consumed == 0 and len(data) >= max_line:
                # garbage without newlines: set it aside up to the next newline
                skipped = self._skip_line(max_line)
                return Parsed(), self.offset + skipped, data[:max_line]
        return parsed, self.offset + parsed.consumed, None

    def _skip_line(self, start: int) -> int:
        pos = start
        while True:
            more = os.pread(self.fd, 1 << 20, self.offset + pos)
            if not more:
                return pos  # will be re-examined when the line ends
            nl = more.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(more)


def first_line_time(path: str) -> str | None:
    """The ``time`` of a json-file's first line (when it is readable)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(FINGERPRINT_MAX)
        return str(orjson.loads(line)["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def same_file(path: str, dev: int, ino: int) -> bool | None:
    """Whether ``path`` is still (dev, ino); None when ``path`` does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev == dev and st.st_ino == ino


def directory_exists(path: str) -> bool:
    return Path(path).parent.is_dir()
