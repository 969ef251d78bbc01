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
decodes to a :class:`BadTime` and only its entry is refused (:meth:`ForwardTimes.any`).
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
import io
import math
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from itertools import chain, islice
from typing import Any

import msgpack

from collector.codecs import InputError
from collector.codecs.times import TimeFormatter

EVENT_TIME = 0  # msgpack ext type of Fluentd's EventTime
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
MAX_DEPTH = 64  # deeper values in a record are refused (orjson stops at 255)

_SECNS = struct.Struct(">II")


class ForwardError(InputError):
    """Input that breaks the forward protocol."""


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
class ForwardTimes(TimeFormatter):
    """The forward protocol's times (integers, floats, EventTime, msgpack timestamps) to
    ``2024-05-01T12:00:00.123456789Z``; a time out of range is a ForwardError."""

    __slots__ = ()

    def __call__(self, sec: int, ns: int = 0) -> str:
        if sec != self._sec:
            if not 0 <= sec <= MAX_SECONDS:
                raise ForwardError("bad time", f"{sec} seconds is out of range")
            self._date(sec)
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
# What a peer sends is decoded only once all of it is there: a scanning unpacker (``skip``,
# which builds nothing) finds where each object ends, then the object is built.  So a declared
# length or a nesting that its bytes do not back (a 4 GB string header, 1,023 nested arrays
# declaring 2^24 items each) costs nothing but those few bytes, however long the connection
# waits.  A whole object costs at most a few times its size in Python objects; one larger than
# SMALL_OBJECT is decoded part by part, its parts checked first (at most MAX_ITEMS items,
# MAX_DEPTH + 4 levels), and a Forward-mode message's entries only one at a time as they are
# read (:class:`Entries`).
SMALL_OBJECT = 256 << 10  # a whole object up to this size is decoded in one go (at most ~20 MB of objects)
MAX_ITEMS = 1 << 18  # array elements + map keys and values of one larger part
FIRST_BUFFER = 1024  # a stream unpacker's first buffer, grown as needed (msgpack's default: 1 MiB per connection)
READ_SIZE = 64 << 10  # what an unpacker over a buffer reads at a time
RUN = 1024  # whole objects found before they are decoded together ...
RUN_BYTES = 256 << 10  # ... or this many bytes of them
GZIP_PIECE = 1 << 20  # bytes decompressed at a time


def new_unpacker(max_bytes: int, times: ForwardTimes, file_like: Any = None) -> msgpack.Unpacker:
    """A decoding unpacker: ``feed`` it (or give it a file), then iterate.

    ``max_bytes`` bounds its buffer (one object can be no larger) and every declared length.
    Only whole objects may be given to it (see :class:`Framer`): a declared length is allocated
    as soon as it is read.
    """
    return msgpack.Unpacker(
        file_like,
        read_size=min(READ_SIZE if file_like is not None else FIRST_BUFFER, max_bytes),
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        use_list=True,
        max_buffer_size=max_bytes,
        ext_hook=times.ext_hook,
        timestamp=0,  # msgpack's own timestamp (ext -1) as msgpack.Timestamp: any seconds, no OverflowError
    )


def _scanner(max_bytes: int, file_like: Any = None) -> msgpack.Unpacker:
    size = READ_SIZE if file_like is not None else FIRST_BUFFER
    return msgpack.Unpacker(file_like, read_size=min(size, max_bytes), max_buffer_size=max_bytes)


class Framer:
    """Whole msgpack objects out of a byte stream (a connection) or a buffer (a payload).

    ``feed`` bytes as they arrive (stream), or build it ``over`` a buffer; iterating yields each
    object once all of its bytes are there, decoded (see the comment above): the scanner finds a
    run of whole objects (RUN at most, RUN_BYTES at most), then the decoder builds exactly
    those, in C (``islice``, chained); one larger than SMALL_OBJECT is decoded part by part.

    An object msgpack cannot decode (an unhashable map key, a malformed timestamp): over a
    buffer it comes out as an :class:`Undecodable` and the others go on; in a stream the
    exception goes to the caller, and the next iteration goes on after that object (so does
    one stopped early, from where it stopped).  ``buffered`` is what is held of an object
    still arriving (over a buffer: what is left when it ends cut short, see :meth:`rest`).  A
    stream framer holding nothing holds no unpacker either (each has a 20 KiB stack): an idle
    connection costs little, and what grew for a large message is given back.
    """

    def __init__(self, max_bytes: int, times: ForwardTimes, data: bytes | None = None, start: int = 0) -> None:
        self.max_bytes = max_bytes
        self.times = times
        self._data = data
        self._start = start
        self._scan: msgpack.Unpacker | None = None
        self._dec: msgpack.Unpacker | None = None
        self._fed = 0
        self._pos = 0  # where the decoder is: the end of the last object taken
        self._run = 0  # where the run being decoded began
        self._ends: list[int] = []  # the ends of its objects
        if data is not None:
            self._new()

    @classmethod
    def over(cls, data: bytes, times: ForwardTimes, start: int = 0) -> Framer:
        return cls(max(1, len(data) - start), times, data, start)

    def _new(self) -> None:
        if self._data is not None:
            a, b = io.BytesIO(self._data), io.BytesIO(self._data)
            a.seek(self._start)
            b.seek(self._start)
            self._fed = len(self._data) - self._start
        else:
            a = b = None
            self._fed = 0
        self._scan = _scanner(self.max_bytes, a)
        self._dec = new_unpacker(self.max_bytes, self.times, b)
        self._pos = self._run = 0
        self._ends = []

    def feed(self, data: bytes) -> None:
        if self.buffered + len(data) > self.max_bytes:
            raise ForwardError("message too large", f"a message is larger than {self.max_bytes} bytes")
        if self._scan is None or self._dec is None:
            self._new()
            assert self._scan is not None and self._dec is not None
        try:
            self._scan.feed(data)
            self._dec.feed(data)
        except msgpack.BufferFull:
            raise ForwardError("message too large", f"a message is larger than {self.max_bytes} bytes") from None
        self._fed += len(data)

    @property
    def buffered(self) -> int:
        return 0 if self._dec is None else self._fed - self._pos

    @property
    def held(self) -> int:
        """Bytes held in memory: the object still arriving, twice (the scanner keeps the part
        of it that it has not passed yet, such as a long string)."""
        if self._dec is None or self._scan is None:
            return 0
        return 2 * self._fed - self._pos - self._scan.tell()

    def __iter__(self) -> Iterator[Any]:
        if self._dec is not None and self._dec.tell() != self._pos:
            self._catch_up()
        return chain.from_iterable(self._runs())

    def _runs(self) -> Iterator[Iterator[Any]]:
        times = self.times
        soft = self._data is not None  # over a buffer: an object that fails is an Undecodable
        while True:
            scan, dec = self._scan, self._dec
            if scan is None or dec is None:
                return
            skip, tell = scan.skip, scan.tell
            pos = self._run = self._pos
            ends = self._ends = []
            last = pos
            large = done = False
            while len(ends) < RUN:
                try:
                    skip()
                except msgpack.OutOfData:
                    done = True
                    break
                e = tell()  # (not after OutOfData: it would count a part of the next object)
                ends.append(e)
                if e - last > SMALL_OBJECT:
                    large = True
                    break
                last = e
                if e - pos > RUN_BYTES:
                    break
            n = len(ends) - large
            if n:
                if not soft:
                    yield islice(dec, n)  # (chain takes all of it before it asks for more)
                    self._pos = last
                else:
                    objs: list[Any] = []
                    try:
                        objs.extend(islice(dec, n))
                    except (ValueError, TypeError, msgpack.UnpackException) as e:
                        objs.append(self._undecodable(e, len(objs)))
                        yield iter(objs)
                        continue  # (a new scanner and decoder, after the object that failed)
                    self._pos = last
                    yield iter(objs)
            if large:
                raw = dec.read_bytes(ends[-1] - last)
                self._pos = ends[-1]
                try:
                    obj = decode_large(raw, times)
                except (ValueError, TypeError, msgpack.UnpackException) as e:  # (ForwardError is a ValueError)
                    if not soft:
                        raise
                    obj = Undecodable(getattr(e, "reason", None) or _reason(e), str(e), raw[:4096])
                yield iter((obj,))
            elif done:
                break
        if self._data is None and self._pos == self._fed:
            self._scan = self._dec = None  # nothing held: no unpacker held either

    def _undecodable(self, e: Exception, k: int) -> Undecodable:
        """The ``k``-th object of the run (over a buffer) failed to decode: it, as an
        :class:`Undecodable`; the framer goes on after it."""
        ends = self._ends
        start = ends[k - 1] if k else self._run
        raw = b"" if self._data is None else self._data[self._start + start : self._start + ends[k]]
        self._resync(ends[k])
        return Undecodable(_reason(e), str(e) or type(e).__name__, raw)

    def _catch_up(self) -> None:
        """The last iteration stopped inside a run: go on from where the decoder is, or, when
        an object failed to decode there, after it."""
        assert self._dec is not None
        at = self._dec.tell()
        self._resync(at if at in self._ends else next((e for e in self._ends if e > at), at))

    def __next__(self) -> Any:
        """One whole object, or StopIteration (what a handshake reads)."""
        if self._dec is not None and self._dec.tell() != self._pos:
            self._catch_up()
        scan, dec = self._scan, self._dec
        if scan is None or dec is None:
            raise StopIteration
        try:
            scan.skip()
        except msgpack.OutOfData:
            raise StopIteration from None
        end = scan.tell()
        size = end - self._pos
        self._run, self._ends = self._pos, [end]
        obj = decode_large(dec.read_bytes(size), self.times) if size > SMALL_OBJECT else dec.unpack()
        self._pos = end
        if self._data is None and end == self._fed:
            self._scan = self._dec = None
        return obj

    def _resync(self, end: int) -> None:
        """Go on from ``end`` (an object's end, or where the decoder is) with a new scanner and
        decoder."""
        if self._data is not None:
            self._start += end
            self._new()
            return
        assert self._dec is not None
        at = self._dec.tell()
        rest = self._dec.read_bytes(self._fed - at)[end - at :]
        self._scan = self._dec = None
        self._pos = 0
        if rest:
            self.feed(rest)

    def rest(self) -> bytes:
        """What is left after the last whole object (a buffer that ends cut short)."""
        return self._dec.read_bytes(self.buffered) if self._dec is not None else b""


class Undecodable:
    """An entry of a packed stream that msgpack cannot decode (a malformed msgpack timestamp,
    an unhashable map key, ...), or the end of a stream cut short: only that entry is refused,
    the stream goes on after it."""

    __slots__ = ("detail", "raw", "reason")

    def __init__(self, reason: str, detail: str, raw: bytes) -> None:
        self.reason = reason
        self.detail = detail
        self.raw = raw

    def __str__(self) -> str:
        return f"(undecodable entry: {self.detail}; {len(self.raw)} bytes: {self.raw[:256].hex()})"

    __repr__ = __str__


def _reason(e: Exception) -> str:
    if isinstance(e, msgpack.StackError):
        return "too deeply nested"
    if isinstance(e, TypeError):
        return "bad map key"
    if "timestamp" in str(e) or "nanoseconds" in str(e):
        return "bad time"
    return "bad entry"


class Entries:
    """The entries of a large Forward-mode message, decoded one at a time as they are read."""

    __slots__ = ("count", "data", "start", "times")

    def __init__(self, data: bytes, start: int, count: int, times: ForwardTimes) -> None:
        self.data = data
        self.start = start  # the first entry (after the array header)
        self.count = count
        self.times = times

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        it = iter(Framer.over(self.data, self.times, self.start))
        for _ in range(self.count):
            yield next(it)


def decode_large(raw: bytes, times: ForwardTimes) -> Any:
    """A whole object larger than SMALL_OBJECT.  A forward message is decoded part by part,
    a Forward-mode entries array left as :class:`Entries`; anything else by :func:`decode_part`."""
    u = new_unpacker(len(raw), times, io.BytesIO(raw))
    try:
        n = u.read_array_header()
    except ValueError:
        n = -1
    if not 2 <= n <= 4:
        return decode_part(memoryview(raw), times)  # split_message names what is wrong with it
    view = memoryview(raw)
    out: list[Any] = []
    for i in range(n):
        start = u.tell()
        if i == 1 and _is_array(raw[start]):
            head = _scanner(len(raw), io.BytesIO(raw[start : start + 5]))
            count = head.read_array_header()
            u.skip()  # the whole array (in C): the options after it are needed first
            out.append(Entries(raw, start + head.tell(), count, times))
            continue
        u.skip()
        out.append(decode_part(view[start : u.tell()], times))
    return out


def decode_part(view: memoryview, times: ForwardTimes) -> Any:
    """One whole object; one larger than SMALL_OBJECT is checked first (items and depth)."""
    if len(view) > SMALL_OBJECT:
        check_structure(view)
    return msgpack.unpackb(
        view,
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        ext_hook=times.ext_hook,
        timestamp=0,
    )


def _is_array(b: int) -> bool:
    return 0x90 <= b <= 0x9F or b in (0xDC, 0xDD)


def _is_map(b: int) -> bool:
    return 0x80 <= b <= 0x8F or b in (0xDE, 0xDF)


def check_structure(view: memoryview, max_items: int = MAX_ITEMS, max_depth: int = MAX_DEPTH + 4) -> None:
    """ForwardError unless the whole object in ``view`` has at most ``max_items`` items and
    ``max_depth`` levels (walks its headers; builds only leaves, one at a time)."""
    u = msgpack.Unpacker(read_size=min(READ_SIZE, len(view)), max_buffer_size=len(view))
    u.feed(view)
    stack = [1]
    items = 0
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        b = view[u.tell()]
        if _is_array(b):
            n = u.read_array_header()
        elif _is_map(b):
            n = 2 * u.read_map_header()
        else:
            u.skip()
            continue
        items += n
        if items > max_items:
            raise ForwardError("too many items", f"more than {max_items} values in one part of a message")
        if len(stack) >= max_depth:
            raise ForwardError("too deeply nested", f"more than {max_depth} levels")
        stack.append(n)


def split_message(msg: Any) -> tuple[str, str, Any, Mapping[str, Any]]:
    """``(tag, mode, payload, options)`` of one decoded message.

    ``mode`` is ``message`` (payload ``(time, record)``), ``forward`` (payload: the entries, a
    list or :class:`Entries`) or ``packed`` (payload: the bytes of a msgpack stream of entries,
    decompressed later by :func:`packed_entries`).
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
    if t2 is list or t2 is Entries or t2 is bytes or t2 is str:
        if n > 3:
            raise ForwardError("not a forward message", f"an array of {n} items in Forward mode")
        options = _options(msg[2] if n == 3 else None)
        if t2 is list or t2 is Entries:
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


def gunzip_pieces(data: bytes, piece: int = GZIP_PIECE) -> Iterator[bytes]:
    """The content of one or more concatenated gzip members, ``piece`` bytes at a time."""
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, piece)
            while True:
                if chunk:
                    yield chunk
                if not d.unconsumed_tail:
                    break
                chunk = d.decompress(d.unconsumed_tail, piece)
            if not d.eof:
                tail = d.flush()
                if tail:
                    yield tail
                if not d.eof:
                    raise ForwardError("bad gzip", "truncated gzip data")
            rest = d.unused_data
            # trailing zero padding after the last member is tolerated (as gzip(1) does)
            if rest and not rest.strip(b"\0"):
                break
    except zlib.error as e:
        raise ForwardError("bad gzip", str(e)) from None


def gunzip_size(data: bytes, limit: int) -> int:
    """The decompressed size of ``data`` (checked whole before anything is decoded), refusing
    more than ``limit`` bytes or a corrupt stream."""
    total = 0
    for chunk in gunzip_pieces(data, 1 << 20):
        total += len(chunk)
        if total > limit:
            raise ForwardError("decompressed too large", f"more than {limit} bytes")
    return total


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress one or more concatenated gzip members, refusing more than ``limit`` bytes."""
    gunzip_size(data, limit)
    return b"".join(gunzip_pieces(data, 1 << 20))


def packed_entries(data: bytes, options: Mapping[str, Any], times: ForwardTimes, max_bytes: int) -> Iterator[Any]:
    """The ``[time, record]`` entries of a (Compressed)PackedForward payload, one by one (see
    :class:`Framer`: nothing is built before it is whole, the lot in C); an entry msgpack cannot
    decode comes out as an :class:`Undecodable`, and so does the end of a payload cut short."""
    comp = options.get("compressed")
    if comp == "gzip":
        data = gunzip(data, max_bytes)  # all or nothing: too large or corrupt before any entry is taken
    elif comp not in (None, "text"):
        raise ForwardError("bad option", f"unknown compression {comp!r}")
    f = Framer.over(data, times)
    return chain(f, _cut_short(f))


def _cut_short(f: Framer) -> Iterator[Undecodable]:
    if f.buffered:
        yield Undecodable("bad entry", "the stream ends inside an entry", f.rest())


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
            return ForwardTimes()(v.seconds, v.nanoseconds)
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
