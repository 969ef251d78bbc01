"""Whole msgpack objects out of a stream or a buffer, decoded only once all of their bytes are
there (:class:`Framer`), large objects part by part (:func:`decode_large`, :class:`Entries`),
and what cannot be decoded (:class:`Undecodable`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any

import msgpack

from collector.codecs.forward.errors import ForwardError
from collector.codecs.forward.eventtime import ForwardTimes

MAX_DEPTH = 64  # deeper values in a record are refused (orjson stops at 255)

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
