"""One open log file: identity, reading position, and the records read from it.

A file is known by its *fingerprint*: a hash of its container directory and its first line
(Docker's first line carries a nanosecond timestamp, so it is unique, and it survives the
rename that rotation does).  Checkpoints and record ids (``<fingerprint>-<offset>``) use it,
so a file read again after a restart or a rotation yields the same ids.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from collector.acks import OrderedAcks
from collector.codecs.cri import CriLineReader
from collector.codecs.docker_json import LineReader, Parsed
from collector.safefiles import open_regular

FINGERPRINT_MAX = 256 << 10  # a first line longer than this is hashed on its first 256 KiB
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}\Z")
_ROTATED = re.compile(r"\.(\d+|\d{8}-\d{6})(\.gz)?\Z")
# kubelet names a rotated CRI log ``0.log.<YYYYMMDD-HHMMSS>``: ranked like Docker's numbers (the
# greater, the older) by their distance from a time far in the future
_KUBELET_EPOCH = 10**14


def new_reader(fmt: str, max_record_bytes: int, max_field_bytes: int) -> LineReader:
    """The line reader of a file in ``fmt`` (``json-file`` or ``cri``)."""
    cls = CriLineReader if fmt == "cri" else LineReader
    return cls(max_record_bytes, max_field_bytes)


def container_id_of(path: str) -> str:
    """The container id when ``path`` sits in Docker's layout (``.../<id>/<id>-json.log``)."""
    parent = os.path.basename(os.path.dirname(path))
    return parent if _CONTAINER_ID.match(parent) else ""


def pod_of(path: str) -> dict[str, Any] | None:
    """The pod, namespace and container of a CRI log in kubelet's layout
    (``.../<namespace>_<pod>_<uid>/<container>/<restart>.log``); None elsewhere. Namespaces and
    pod names are DNS labels and subdomains (never an ``_``), so the split is unambiguous."""
    p = Path(path)
    parts = p.parent.parent.name.split("_")
    if len(parts) != 3 or not all(parts) or not p.parent.name or p.suffix != ".log":
        return None
    namespace, pod, uid = parts
    container: dict[str, Any] = {"name": p.parent.name}
    if p.stem.isdigit():
        container["restart_count"] = int(p.stem)
    return {
        "kubernetes": {"namespace": namespace, "pod": {"name": pod, "uid": uid}, "container": container},
        "container": {"name": p.parent.name},
    }


def salt_of(live: str) -> str:
    """What makes a fingerprint unique to its log stream: the container id, else the directory."""
    return container_id_of(live) or os.path.dirname(os.path.abspath(live))


def fingerprint(fd: int, salt: str) -> str | None:
    """Hex id of the file from its first complete line; None until one is written."""
    return _fingerprint(lambda n: os.pread(fd, n, 0), salt)


def _fingerprint(head_of: Callable[[int], bytes], salt: str) -> str | None:
    head = head_of(4096)
    nl = head.find(b"\n")
    if nl < 0:
        if len(head) < 4096:
            return None
        head = head_of(FINGERPRINT_MAX)
        nl = head.find(b"\n")
        if nl < 0 and len(head) < FINGERPRINT_MAX:
            return None
    first = head[: nl + 1] if nl >= 0 else head
    return hashlib.blake2b(salt.encode() + b"\0" + first, digest_size=8).hexdigest()


def _gz_head(path: str, n: int, root: str | None) -> bytes:
    with open(open_regular(path, root), "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        return f.read(n)


def fingerprint_path(path: str, salt: str, root: str | None = None) -> str | None:
    """The fingerprint of the file at ``path`` (inflated first when gzip'ed); None if unreadable
    (or not a regular file within ``root``)."""
    if is_compressed(path):
        try:
            return _fingerprint(lambda n: _gz_head(path, n, root), salt)
        except (OSError, EOFError, zlib.error):
            return None
    try:
        fd = open_regular(path, root)
    except OSError:
        return None
    try:
        return fingerprint(fd, salt)
    finally:
        os.close(fd)


def is_compressed(path: str) -> bool:
    return path.endswith(".gz")


def open_log(path: str, root: str | None = None) -> int:
    """A descriptor to read ``path`` with ``pread`` (see :func:`open_regular`). A gzip'ed
    rotation (Docker's ``compress=true``) is inflated into an anonymous in-memory file, held
    only while it is read (its uncompressed size, at most the container's ``max-size``)."""
    if not is_compressed(path):
        return open_regular(path, root)
    src_fd = open_regular(path, root)
    fd = os.memfd_create("collector-rotated", os.MFD_CLOEXEC)
    try:
        with (
            open(src_fd, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as src,
            open(fd, "wb", closefd=False) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        os.close(fd)
        raise OSError(f"{path}: unreadable gzip ({e})") from e
    return fd


def log_size(path: str, root: str | None = None) -> int:
    """Bytes of log in ``path``: a gzip'ed file's uncompressed size (its trailer, modulo 4 GiB)."""
    if not is_compressed(path):
        return os.path.getsize(path)
    with open(open_regular(path, root), "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def rotated_siblings(live: str) -> list[tuple[int, str]]:
    """The rotated files of ``live`` as (rank, path), oldest first (the greater the rank, the
    older): Docker's (``x-json.log.1``, ``x-json.log.2.gz`` ...) and kubelet's
    (``0.log.20241201-120000``, ``0.log.20241201-115000.gz``). While either compresses a file
    both names exist for a moment: the plain one is listed (the ``.gz`` is complete only once
    the plain one is gone; kubelet writes it as ``.tmp`` first, which is never listed)."""
    d, base = os.path.split(live)
    found: dict[int, str] = {}
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    for n in names:
        if n.startswith(base + "."):
            m = _ROTATED.search(n)
            if m and n == f"{base}.{m.group(1)}{m.group(2) or ''}":
                stamp = m.group(1)
                num = _KUBELET_EPOCH - int(stamp.replace("-", "")) if "-" in stamp else int(stamp)
                if not m.group(2) or num not in found:
                    found[num] = os.path.join(d, n)
    return sorted(found.items(), reverse=True)


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
    quiet_until: float = 0.0  # renamed: still read until then (monotonic) for its writer's last lines

    @classmethod
    def open(
        cls,
        path: str,
        live: str,
        offset: int,
        max_record_bytes: int,
        root: str | None = None,
        max_field_bytes: int = 4096,
        fmt: str = "json-file",
    ) -> OpenFile:
        fd = open_log(path, root)
        try:
            st = os.fstat(fd)
            cid = container_id_of(live)
            fp = fingerprint(fd, salt_of(live))
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
            reader=new_reader(fmt, max_record_bytes, max_field_bytes),
            acks=OrderedAcks(offset),
            size=st.st_size,
        )

    def salt(self) -> str:
        return salt_of(self.live)

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


def first_line_time(path: str, root: str | None = None) -> str | None:
    """The time of a json-file's or CRI log's first line (when it is readable)."""
    try:
        with open(open_regular(path, root), "rb") as raw:
            f = gzip.GzipFile(fileobj=raw, mode="rb") if is_compressed(path) else raw
            line = f.readline(FINGERPRINT_MAX)
        if not line.startswith(b"{"):  # CRI: "<time> <stream> <tag> <message>"
            return line.split(b" ", 1)[0].decode() if b" " in line else None
        return str(orjson.loads(line)["time"])
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError):
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
