"""One GELF message: (de)compression, TCP null framing, JSON decoding and the required fields,
timestamps, levels and the field names Graylog stores.  UDP chunking is in chunks.py; the package
docstring (``collector/codecs/gelf/__init__.py``) describes the whole."""

from __future__ import annotations

import calendar
import math
import re
import time
import zlib
from datetime import datetime
from typing import Any, Literal

import orjson

from collector import levels
from collector.codecs import InputError

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
VERSION = "1.1"
MAX_DEFLATE_RATIO = 1032  # the most a deflate stream can expand (zlib's technical notes: 1032:1)

Compression = Literal["gzip", "zlib", "none"]

# syslog severities, as GELF's ``level``: the one vocabulary of collector/levels.py
LEVEL_NAMES = levels.NAMES
LEVEL_CODES = levels.CODES
DEFAULT_LEVEL = 6


class GelfError(InputError):
    """A GELF message that cannot be accepted."""


# -- compression ---------------------------------------------------------------------------------
def compression_of(payload: bytes) -> Compression:
    """What a GELF UDP payload is, by its first bytes (as Graylog tells them apart)."""
    if payload[:2] == GZIP_MAGIC:
        return "gzip"
    if len(payload) >= 2 and payload[0] == 0x78 and (payload[0] * 256 + payload[1]) % 31 == 0:
        return "zlib"
    return "none"


def decompress(payload: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """The message inside a gzip, zlib or plain payload; never more than ``max_bytes``.

    Raises GelfError ``too_large`` past the limit (however small the input: bombs stop
    there), ``bad_compression`` for a corrupt or truncated stream.
    """
    kind = compression_of(payload)
    if kind == "none":
        if len(payload) > max_bytes:
            raise GelfError("too_large", f"{len(payload)} bytes > {max_bytes}")
        return payload
    wbits = 31 if kind == "gzip" else 15
    if len(payload) * MAX_DEFLATE_RATIO <= max_bytes:
        # cannot inflate past the limit (deflate expands 1032:1 at most): the faster one-shot call
        try:
            return zlib.decompress(payload, wbits)
        except zlib.error as e:
            raise GelfError("bad_compression", f"{kind}: {e}") from None
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(payload, max_bytes + 1)
    except zlib.error as e:
        raise GelfError("bad_compression", f"{kind}: {e}") from None
    if len(out) > max_bytes:
        raise GelfError("too_large", f"{kind} payload inflates past {max_bytes} bytes")
    if not d.eof:
        raise GelfError("bad_compression", f"{kind}: stream truncated")
    return out


def compressor(method: Compression, level: int = 1) -> Any:
    """A function bytes -> payload for ``method``.

    memLevel 5 (zlib's default is 8): the same ratio on log-sized messages and ~8x faster,
    since most of the cost of compressing a small message is setting up zlib's tables.
    """
    if method == "none":
        return bytes
    wbits = 31 if method == "gzip" else 15
    new = zlib.compressobj
    deflated = zlib.DEFLATED

    def compress(data: bytes) -> bytes:
        c = new(level, deflated, wbits, 5)
        return c.compress(data) + c.flush()

    return compress


def compress(data: bytes, method: Compression = "gzip", level: int = 1) -> bytes:
    return compressor(method, level)(data)


# -- TCP framing ---------------------------------------------------------------------------------
class FrameSplitter:
    """Null-terminated frames out of a byte stream, each at most ``max_bytes``.

    ``feed`` returns complete frames (whitespace-only ones skipped) and, for each frame
    longer than the limit, its first ``keep`` bytes as ``oversize`` (the rest is skipped up to
    the next null byte, without being held in memory).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keep: int = 4096) -> None:
        self.max_bytes = max_bytes
        self.keep = keep
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping: bytes | None = None  # head of an oversize frame being skipped
        self.oversize: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        frames = data.split(b"\0")
        tail = frames.pop()
        if len(frames) and (self._parts or self._skipping is not None):
            first = frames[0]
            if self._skipping is not None:
                self.oversize.append(self._skipping)
                self._skipping = None
                frames[0] = b""
            else:
                self._parts.append(first)
                joined = b"".join(self._parts)
                self._parts = []
                self._size = 0
                if len(joined) > self.max_bytes:
                    self.oversize.append(joined[: self.keep])
                    frames[0] = b""
                else:
                    frames[0] = joined
        if tail and self._skipping is None:
            self._parts.append(tail)
            self._size += len(tail)
            if self._size > self.max_bytes:
                self._skipping = b"".join(self._parts)[: self.keep]
                self._parts = []
                self._size = 0
        out = []
        mx = self.max_bytes
        for f in frames:
            if not f or f.isspace():
                continue
            if len(f) > mx:
                self.oversize.append(f[: self.keep])
                continue
            out.append(f)
        return out

    def flush(self) -> bytes | None:
        """What is left at the end of the stream (a last frame without its null byte)."""
        rest = b"".join(self._parts)
        self._parts = []
        self._size = 0
        if self._skipping is not None:
            self.oversize.append(self._skipping)
            self._skipping = None
        return rest if rest.strip() else None

    @property
    def buffered(self) -> int:
        """Bytes held of a frame still arriving."""
        return self._size

    def take_oversize(self) -> list[bytes]:
        out, self.oversize = self.oversize, []
        return out


def frame(message: bytes) -> bytes:
    """A JSON document as one TCP frame."""
    return message + b"\0"


# -- messages ------------------------------------------------------------------------------------
def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A GELF message (a JSON object with a ``short_message``) from a payload.

    ``host`` is required by the GELF spec, but Fluent Bit (and others) leave it out when the
    record has none: such a message is accepted, and the source names the sender instead."""
    return decode_sized(payload, max_bytes)[0]


def decode_sized(payload: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[dict[str, Any], int]:
    """:func:`decode`, and the size of the message once decompressed (what it costs in memory)."""
    first = payload[:1]
    if first == b"\x1f" or first == b"x":  # noqa: PLR1714 - gzip or zlib magic (compression_of decides)
        raw = decompress(payload, max_bytes)
    else:
        raw = payload
        if len(raw) > max_bytes:
            raise GelfError("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise GelfError("bad_json", str(e)) from None
    if type(msg) is not dict:
        raise GelfError("not_an_object", type(msg).__name__)
    if type(msg.get("short_message")) is not str:
        check(msg)
    return msg, len(raw)


def check(msg: dict[str, Any]) -> None:
    """GELF's one field we cannot do without: ``short_message``, a string."""
    if type(msg.get("short_message")) is not str:
        raise GelfError(
            "missing_field", "short_message" if "short_message" not in msg else "short_message: not a string"
        )


def level_code(value: Any) -> int | None:
    """A syslog severity code from a GELF level or a level name; None when it is neither."""
    return levels.code(value)


# -- timestamps ----------------------------------------------------------------------------------
class TimeParser:
    """RFC 3339 (as our records carry it) -> epoch seconds with microseconds (GELF's timestamp)."""

    __slots__ = ("_epoch", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._epoch = 0

    def __call__(self, s: str) -> float | None:
        if len(s) >= 20 and s[-1] == "Z" and s[10] == "T":
            prefix = s[:19]
            if prefix != self._prefix:
                try:
                    self._epoch = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
                except ValueError:
                    return self._slow(s)
                self._prefix = prefix
            frac = s[19:-1]
            if not frac:
                return float(self._epoch)
            if frac[0] == "." and frac[1:].isdigit():
                return round(self._epoch + int(frac[1:7].ljust(6, "0")) / 1e6, 6)
        return self._slow(s)

    @staticmethod
    def _slow(s: str) -> float | None:
        try:
            d = datetime.fromisoformat(s)
        except ValueError:
            return None
        if d.tzinfo is None:
            return None
        return round(d.timestamp(), 6)


# -- field names ---------------------------------------------------------------------------------
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.@\-]")

# GELF names Graylog 6.1 would not store under their own name: its GelfCodec strips the leading
# "_", then skips a name already set (message, source, timestamp, level, full_message) or reserved
# for Elasticsearch (_id, _source, _index ...); "streams" is overwritten when indexed and gl2_*
# are Graylog's own fields.  These are sent with a trailing "_" (``_source`` -> ``_source_``).
GRAYLOG_TAKEN = frozenset(
    {"_message", "_source", "_timestamp", "_level", "_full_message", "_streams", "_failed_message_streams"}
    | {"__id", "__ttl", "__source", "__all", "__index", "__type", "__score"}
)


def sanitize_key(key: str) -> str:
    """A field name Graylog accepts (Message.validKey: ``[A-Za-z0-9_.@-]``): other characters become ``_``."""
    return _BAD_KEY_CHARS.sub("_", key)


def gelf_name(prefix: str, key: str) -> str:
    """The GELF additional field for ``key`` under ``prefix``, one Graylog stores as it is named."""
    name = prefix + "_" + sanitize_key(key)
    if name in GRAYLOG_TAKEN or name.startswith("_gl2_"):
        name += "_"
    return name


MAX_CACHED_NAMES = 10_000


def flatten(value: dict[str, Any], prefix: str, out: dict[str, Any], names: dict[tuple[str, str], str]) -> None:
    """``{"container": {"image": {"name": n}}}`` -> ``out["_container_image_name"] = n``.

    Values become what Graylog stores: strings and numbers.  Lists of scalars are joined with
    ``,``; other lists and odd values are JSON-encoded; booleans are ``"true"``/``"false"``;
    None is left out.  ``names`` caches sanitized names.
    """
    for k, v in value.items():
        name = names.get((prefix, k))
        if name is None:
            if len(names) >= MAX_CACHED_NAMES:  # field names come from senders: keep the cache bounded
                names.clear()
            name = names[(prefix, k)] = gelf_name(prefix, str(k))
        t = type(v)
        if t is str or t is int:
            out[name] = v
        elif t is dict:
            flatten(v, name, out, names)
        elif t is float:
            out[name] = v if math.isfinite(v) else str(v)
        elif v is None:
            continue
        elif t is bool:
            out[name] = "true" if v else "false"
        elif t is list or t is tuple:
            if all(type(x) in (str, int, float) for x in v):
                out[name] = ",".join(str(x) for x in v)
            else:
                out[name] = orjson.dumps(v, default=str).decode()
        else:
            out[name] = str(v)
