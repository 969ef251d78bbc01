"""The message shapes: a decoded message split into ``(tag, mode, payload, options)``, the
entries of a (Compressed)PackedForward payload, and messages built (for clients, tests and the
benchmark)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

import msgpack

from collector.codecs.forward.errors import ForwardError, kind
from collector.codecs.forward.eventtime import ForwardTimes
from collector.codecs.forward.framer import Entries, Framer, Undecodable

GZIP_PIECE = 1 << 20  # bytes decompressed at a time


def split_message(msg: Any) -> tuple[str, str, Any, Mapping[str, Any]]:
    """``(tag, mode, payload, options)`` of one decoded message.

    ``mode`` is ``message`` (payload ``(time, record)``), ``forward`` (payload: the entries, a
    list or :class:`Entries`) or ``packed`` (payload: the bytes of a msgpack stream of entries,
    decompressed later by :func:`packed_entries`).
    """
    if type(msg) is not list:
        raise ForwardError("not a forward message", f"expected an array [tag, ...], got {kind(msg)}")
    n = len(msg)
    if not 2 <= n <= 4:
        raise ForwardError("not a forward message", f"an array of {n} items")
    tag = msg[0]
    if type(tag) is not str:
        raise ForwardError("bad tag", f"the tag must be a string, not {kind(tag)}")
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
        raise ForwardError("bad option", f"option must be a map, not {kind(opt)}")
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
