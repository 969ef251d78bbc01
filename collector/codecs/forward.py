"""The Fluentd Forward Protocol v1: framing, decoding and the handshake, as pure functions.

What travels on a connection is a stream of msgpack arrays (no other framing):

    Message                  [tag, time, record, option?]
    Forward                  [tag, [[time, record], ...], option?]
    PackedForward            [tag, bin|str (a msgpack stream of [time, record]), option?]
    CompressedPackedForward  the same, with option {"compressed": "gzip"} (gzip members, concatenated)

``time`` is an integer (seconds), a float, an EventTime (msgpack ext type 0: 4-byte seconds
and 4-byte nanoseconds, big-endian) or a msgpack timestamp (ext type -1).  Since Fluent Bit 4.x
an entry may also be ``[[time, metadata], record]`` (its ``retain_metadata_in_forward_mode``,
on by default), with group markers (EventTime seconds 0xFFFFFFFF / 0xFFFFFFFE) around the
records of an OpenTelemetry group.  A time that cannot be read never stops the decoder: it
decodes to a :class:`BadTime` and only its entry is refused (:meth:`TimeFormatter.any`).
``option`` may carry ``size`` (the number of events),
``chunk`` (the client wants ``{"ack": chunk}`` back once the events are safe) and
``compressed``.  With a shared key, the server opens with ``HELO``, the client answers
``PING`` and the server ``PONG`` (see :func:`check_ping`).

Decoding is lenient where the wire format is (a packed stream may arrive as ``str``, option may be
``nil``) and strict about shapes: :class:`ForwardError` names what is wrong.  Text is decoded
with ``surrogateescape`` so bytes are never lost; :func:`text` makes a string JSON-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgpack

EVENT_TIME = 0  # msgpack ext type of Fluentd's EventTime
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
MAX_DEPTH = 64  # deeper values in a record are refused (orjson stops at 255)

_SECNS = struct.Struct(">II")


class ForwardError(ValueError):
    """Input that breaks the protocol; ``reason`` is short and stable (a counter label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Stamp(str):
    """An RFC 3339 timestamp decoded from an EventTime (tells it apart from a client's string)."""

    __slots__ = ()


class BadTime:
    """What a malformed EventTime decodes to: its entry is refused, not the whole message."""

    __slots__ = ("data", "detail")

    def __init__(self, detail: str, data: bytes) -> None:
        self.detail = detail
        self.data = data

    def __str__(self) -> str:
        return f"(bad EventTime: {self.detail}; ext 0 {self.data[:64].hex()})"

    __repr__ = __str__


# Fluent Bit's group markers: EventTime seconds (uint32_t) -1 and -2, nanoseconds 0
# (include/fluent-bit/flb_log_event.h, FLB_LOG_EVENT_GROUP_START/END; src/flb_log_event_encoder.c)
GROUP_START_SECONDS = 0xFFFFFFFF
GROUP_END_SECONDS = 0xFFFFFFFE


# -- time ---------------------------------------------------------------------------------------
class TimeFormatter:
    """Seconds and nanoseconds to ``2024-05-01T12:00:00.123456789Z``; the date part of the
    last second seen is cached (a stream's records mostly share it)."""

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._sec: int | None = None
        self._prefix = ""

    def __call__(self, sec: int, ns: int = 0) -> str:
        if sec != self._sec:
            if not 0 <= sec <= MAX_SECONDS:
                raise ForwardError("bad time", f"{sec} seconds is out of range")
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._sec = sec
        return f"{self._prefix}.{ns:09d}Z"

    def ext_hook(self, code: int, data: bytes) -> Any:
        """msgpack ``ext_hook``: EventTime becomes a :class:`Stamp` (a malformed one a
        :class:`BadTime`, never an exception: that would cost the whole message); other
        types a plain dict."""
        if code == EVENT_TIME:
            if len(data) != 8:
                return BadTime(f"{len(data)} bytes instead of 8", data)
            sec, ns = _SECNS.unpack(data)
            if ns >= 1_000_000_000:
                return BadTime(f"{ns} nanoseconds", data)
            if sec >= GROUP_END_SECONDS and ns == 0:
                return GROUP_START if sec == GROUP_START_SECONDS else GROUP_END
            return Stamp(self(sec, ns))
        return {"ext_type": code, "hex": data[:1024].hex()}

    def any(self, t: Any) -> str:
        """A record's time, whatever its wire type; ForwardError when it is not a time."""
        tt = type(t)
        if tt is Stamp or tt is _Marker:  # (a group marker outside Fluent Bit's entry shape is a time)
            return t  # type: ignore[no-any-return]
        if tt is int:
            return self(t)
        if tt is msgpack.Timestamp:
            if not 0 <= t.seconds <= MAX_SECONDS:
                raise ForwardError("bad time", f"{t.seconds} seconds is out of range")
            return self(t.seconds, t.nanoseconds)
        if tt is BadTime:
            raise ForwardError("bad EventTime", t.detail)
        if tt is float and math.isfinite(t) and 0 <= t <= MAX_SECONDS:
            # a double holds about microseconds at today's epoch: keep those, not float noise
            sec = int(t)
            us = round((t - sec) * 1e6)
            if us >= 1_000_000:
                sec, us = sec + 1, us - 1_000_000
            return self(sec, us * 1000)
        raise ForwardError("bad time", f"time must be an integer or an EventTime, not {_kind(t)}")


class _Marker(Stamp):
    """A Fluent Bit group marker: an EventTime that is no time (the entry carries no record)."""

    __slots__ = ()


GROUP_START = _Marker("2106-02-07T06:28:15.000000000Z")
GROUP_END = _Marker("2106-02-07T06:28:14.000000000Z")


def event_time(sec: int, ns: int = 0) -> msgpack.ExtType:
    """The EventTime ext for ``sec``/``ns`` (for clients and tests)."""
    return msgpack.ExtType(EVENT_TIME, _SECNS.pack(sec, ns))


def event_time_ns(t_ns: int) -> msgpack.ExtType:
    return event_time(*divmod(t_ns, 1_000_000_000))


# -- decoding -----------------------------------------------------------------------------------
def new_unpacker(max_bytes: int, times: TimeFormatter) -> msgpack.Unpacker:
    """A streaming unpacker for one connection (``feed`` bytes as they arrive, then iterate).

    ``max_bytes`` bounds its buffer (one message can be no larger) and every declared length.
    """
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        use_list=True,
        max_buffer_size=max_bytes,
        ext_hook=times.ext_hook,
        timestamp=0,  # msgpack's own timestamp (ext -1) as msgpack.Timestamp: any seconds, no OverflowError
    )


def split_message(msg: Any) -> tuple[str, str, Any, Mapping[str, Any]]:
    """``(tag, mode, payload, options)`` of one decoded message.

    ``mode`` is ``message`` (payload ``(time, record)``), ``forward`` (payload: the list of
    entries) or ``packed`` (payload: the bytes of a msgpack stream of entries, decompressed
    later by :func:`packed_entries`).
    """
    if type(msg) is not list:
        raise ForwardError("not a forward message", f"expected an array [tag, ...], got {_kind(msg)}")
    n = len(msg)
    if not 2 <= n <= 4:
        raise ForwardError("not a forward message", f"an array of {n} items")
    tag = msg[0]
    if type(tag) is not str:
        raise ForwardError("bad tag", f"the tag must be a string, not {_kind(tag)}")
    second = msg[1]
    t2 = type(second)
    if t2 is list or t2 is bytes or t2 is str:
        if n > 3:
            raise ForwardError("not a forward message", f"an array of {n} items in Forward mode")
        options = _options(msg[2] if n == 3 else None)
        if t2 is list:
            return tag, "forward", second, options
        data = second if t2 is bytes else second.encode("utf-8", "surrogateescape")
        return tag, "packed", data, options
    if n < 3:
        raise ForwardError("not a forward message", "Message mode needs [tag, time, record]")
    return tag, "message", (second, msg[2]), _options(msg[3] if n == 4 else None)


def _options(opt: Any) -> Mapping[str, Any]:
    if opt is None:
        return {}
    if type(opt) is not dict:
        raise ForwardError("bad option", f"option must be a map, not {_kind(opt)}")
    return opt


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress one or more concatenated gzip members, refusing more than ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, limit - total + 1)
            total += len(chunk)
            out.append(chunk)
            if total > limit or d.unconsumed_tail:
                raise ForwardError("decompressed too large", f"more than {limit} bytes")
            if not d.eof:
                raise ForwardError("bad gzip", "truncated gzip data")
            rest = d.unused_data
            # trailing zero padding after the last member is tolerated (as gzip(1) does)
            if rest and not rest.strip(b"\0"):
                break
    except zlib.error as e:
        raise ForwardError("bad gzip", str(e)) from None
    return b"".join(out)


class Undecodable:
    """An entry of a packed stream that msgpack cannot decode (a malformed msgpack timestamp,
    an unhashable map key, ...): only that entry is refused, the stream goes on after it."""

    __slots__ = ("detail", "raw", "reason")

    def __init__(self, reason: str, detail: str, raw: bytes) -> None:
        self.reason = reason
        self.detail = detail
        self.raw = raw

    def __str__(self) -> str:
        return f"(undecodable entry: {self.detail}; {len(self.raw)} bytes: {self.raw[:256].hex()})"

    __repr__ = __str__


def packed_entries(data: bytes, options: Mapping[str, Any], times: TimeFormatter, max_bytes: int) -> Iterator[Any]:
    """The ``[time, record]`` entries of a (Compressed)PackedForward payload, one by one; an
    entry msgpack cannot decode comes out as an :class:`Undecodable`."""
    comp = options.get("compressed")
    if comp == "gzip":
        data = gunzip(data, max_bytes)
    elif comp not in (None, "text"):
        raise ForwardError("bad option", f"unknown compression {comp!r}")
    return _stream(data, times)


def _stream(data: bytes, times: TimeFormatter) -> Iterator[Any]:
    n = len(data)
    base = 0
    while base < n:
        u = new_unpacker(max(n - base, 1), times)
        u.feed(data[base:] if base else data)
        k = 0  # entries decoded from ``base`` (positions are found again only after an error)
        try:
            for obj in u:
                k += 1
                yield obj
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            start = _skip(data, base, k)
            end = _end_of_object(data, start)
            yield Undecodable(_reason(e), str(e) or type(e).__name__, data[start:end])
            if end >= n or end == start:
                return
            base = end
            continue
        if u.tell() < n - base:
            start = _skip(data, base, k)
            yield Undecodable("bad entry", "the stream ends inside an entry", data[start:])
        return


def _skip(data: bytes, base: int, k: int) -> int:
    """The offset of the ``k``-th object after ``base``."""
    u = msgpack.Unpacker(max_buffer_size=max(len(data) - base, 1))
    u.feed(data[base:])
    for _ in range(k):
        u.skip()
    return base + u.tell()


def _end_of_object(data: bytes, start: int) -> int:
    """Where the msgpack object at ``start`` ends (skipped, not built); ``len(data)`` if never."""
    u = msgpack.Unpacker(max_buffer_size=max(len(data) - start, 1))
    u.feed(data[start:])
    try:
        u.skip()
    except Exception:
        return len(data)
    return start + u.tell()


def _reason(e: Exception) -> str:
    if isinstance(e, msgpack.StackError):
        return "too deeply nested"
    if isinstance(e, TypeError):
        return "bad map key"
    if "timestamp" in str(e) or "nanoseconds" in str(e):
        return "bad time"
    return "bad entry"


# -- records --------------------------------------------------------------------------------------
def text(s: str) -> str:
    """``s`` made valid for JSON: bytes that were not UTF-8 become U+FFFD."""
    if s.isascii():
        return s
    try:
        s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return s


_PLAIN = frozenset({int, float, bool, type(None), Stamp})


def clean(v: Any, depth: int = 0) -> Any:
    """``v`` made JSON-safe for orjson: keys become text, bytes become text, text is valid
    UTF-8.  Returns ``v`` itself when nothing needed changing; ForwardError when too deep."""
    t = type(v)
    if t is str:
        return text(v)
    if t in _PLAIN:
        return v
    if depth >= MAX_DEPTH:
        raise ForwardError("too deeply nested", f"more than {MAX_DEPTH} levels")
    if t is dict:
        out: dict[str, Any] | None = None
        for k, x in v.items():
            ck = text(k) if type(k) is str else _key(k)
            cx = clean(x, depth + 1)
            if out is None and (ck is not k or cx is not x):
                out = {}
                for k2, x2 in v.items():  # copy what came before unchanged
                    if k2 is k:
                        break
                    out[k2] = x2
            if out is not None:
                out[ck] = cx
        return v if out is None else out
    if t is list:
        items = [clean(x, depth + 1) for x in v]
        return v if all(a is b for a, b in zip(items, v, strict=True)) else items
    if t is bytes:
        return v.decode("utf-8", "replace")
    if t is msgpack.Timestamp:
        if 0 <= v.seconds <= MAX_SECONDS:
            return TimeFormatter()(v.seconds, v.nanoseconds)
        return f"{v.seconds}.{v.nanoseconds:09d}"
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    return text(str(v))


def _key(k: Any) -> str:
    if type(k) is bytes:
        return k.decode("utf-8", "replace")
    return text(str(k))


# -- acks -----------------------------------------------------------------------------------------
_ACK_PACKER = msgpack.Packer(unicode_errors="surrogateescape")


def ack_response(chunk: str) -> bytes:
    """``{"ack": chunk}``, the chunk echoed byte for byte."""
    return _ACK_PACKER.pack({"ack": chunk})


# -- handshake (shared key, optional user/password) ----------------------------------------------
def _b(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def digest(*parts: str | bytes) -> str:
    """sha512 hex digest of the concatenated parts (how every handshake value is made)."""
    h = hashlib.sha512()
    for p in parts:
        h.update(_b(p))
    return h.hexdigest()


def helo(nonce: bytes, auth_salt: bytes | str, keepalive: bool = True) -> bytes:
    """``["HELO", {"nonce": nonce, "auth": salt or "", "keepalive": bool}]``."""
    return msgpack.packb(["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": keepalive}], use_bin_type=True)


def check_ping(
    msg: Any,
    nonce: bytes,
    shared_key: str,
    auth_salt: bytes | None = None,
    users: Mapping[str, str] | None = None,
) -> tuple[bool, str, str | bytes, str]:
    """Validate a PING: ``(ok, reason, shared_key_salt, client_hostname)``.

    ``["PING", hostname, shared_key_salt, sha512_hex(salt + hostname + nonce + shared_key),
    username, sha512_hex(auth_salt + username + password)]``; the user part is checked only
    when ``users`` is given.
    """
    if type(msg) is not list or len(msg) != 6 or msg[0] != "PING":
        return False, "invalid ping message", b"", ""
    _, hostname, salt, key_digest, username, password_digest = msg
    if not all(isinstance(x, (str, bytes)) for x in (hostname, salt, key_digest, username, password_digest)):
        return False, "invalid ping message", b"", ""
    host = hostname if isinstance(hostname, str) else hostname.decode("utf-8", "replace")
    expected = digest(salt, hostname, nonce, shared_key)
    if not hmac.compare_digest(expected.encode(), _b(key_digest)):
        return False, "shared_key mismatch", salt, host
    if users:
        user = username if isinstance(username, str) else username.decode("utf-8", "replace")
        password = users.get(user)
        ok = password is not None and hmac.compare_digest(
            digest(auth_salt or b"", user, password).encode(), _b(password_digest)
        )
        if not ok:
            return False, "username/password mismatch", salt, host
    return True, "", salt, host


def pong(ok: bool, reason: str, salt: str | bytes, nonce: bytes, self_hostname: str, shared_key: str) -> bytes:
    """``["PONG", auth_result, reason, self_hostname, sha512_hex(salt + self_hostname + nonce + key)]``."""
    if not ok:
        return msgpack.packb(["PONG", False, reason, "", ""], use_bin_type=True)
    return msgpack.packb(
        ["PONG", True, "", self_hostname, digest(salt, self_hostname, nonce, shared_key)], use_bin_type=True
    )


def ping(
    nonce: bytes,
    shared_key: str,
    hostname: str,
    salt: bytes,
    username: str = "",
    password: str = "",
    auth_salt: bytes | str = b"",
) -> bytes:
    """A client's PING (for tests and the benchmark client)."""
    pw = digest(auth_salt, username, password) if username else ""
    return msgpack.packb(
        ["PING", hostname, salt, digest(salt, hostname, nonce, shared_key), username, pw], use_bin_type=True
    )


# -- encoding (clients, tests, the benchmark) -----------------------------------------------------
def pack_entries(entries: Sequence[tuple[Any, Mapping[str, Any]]]) -> bytes:
    """A msgpack stream of ``[time, record]`` entries (the payload of PackedForward)."""
    pk = msgpack.Packer(use_bin_type=True)
    return b"".join(pk.pack([t, r]) for t, r in entries)


def pack_message(tag: str, entries: Any, option: Mapping[str, Any] | None = None) -> bytes:
    """A Forward (entries: a list) or PackedForward (entries: bytes) message."""
    msg: list[Any] = [tag, entries]
    if option is not None:
        msg.append(dict(option))
    return msgpack.packb(msg, use_bin_type=True)


def unpack_all(data: bytes) -> Iterator[Any]:
    """The objects in ``data`` (what a client reads back: acks, HELO, PONG)."""
    u = msgpack.Unpacker(raw=False)
    u.feed(data)
    yield from u


def _kind(v: Any) -> str:
    return type(v).__name__
