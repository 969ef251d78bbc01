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

The codec, split along its seams (each a module of this package):

    eventtime.py   times: integers, floats, EventTime, msgpack timestamps, group markers
    framer.py      whole objects out of a stream or a buffer, decoding nothing before it is whole
    messages.py    the message shapes, PackedForward payloads and gzip; messages built
    values.py      decoded values made JSON-safe (text, clean)
    handshake.py   HELO/PING/PONG and the ack
    jsonstream.py  messages written as JSON (fluent-logger-golang's MarshalAsJSON)
    errors.py      ForwardError
"""

from __future__ import annotations

from collector.codecs.forward.errors import ForwardError
from collector.codecs.forward.eventtime import (
    EVENT_TIME,
    GROUP_END,
    GROUP_END_SECONDS,
    GROUP_START,
    GROUP_START_SECONDS,
    MAX_SECONDS,
    BadTime,
    ForwardTimes,
    Stamp,
    event_time,
    event_time_ns,
)
from collector.codecs.forward.framer import (
    FIRST_BUFFER,
    MAX_DEPTH,
    MAX_ITEMS,
    READ_SIZE,
    RUN,
    RUN_BYTES,
    SMALL_OBJECT,
    Entries,
    Framer,
    Undecodable,
    check_structure,
    decode_large,
    decode_part,
    new_unpacker,
)
from collector.codecs.forward.handshake import ack_response, check_ping, digest, helo, ping, pong, unpack_all
from collector.codecs.forward.messages import (
    GZIP_PIECE,
    gunzip,
    gunzip_pieces,
    gunzip_size,
    pack_entries,
    pack_message,
    packed_entries,
    split_message,
)
from collector.codecs.forward.values import clean, text

__all__ = [
    "EVENT_TIME",
    "FIRST_BUFFER",
    "GROUP_END",
    "GROUP_END_SECONDS",
    "GROUP_START",
    "GROUP_START_SECONDS",
    "GZIP_PIECE",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_SECONDS",
    "READ_SIZE",
    "RUN",
    "RUN_BYTES",
    "SMALL_OBJECT",
    "BadTime",
    "Entries",
    "ForwardError",
    "ForwardTimes",
    "Framer",
    "Stamp",
    "Undecodable",
    "ack_response",
    "check_ping",
    "check_structure",
    "clean",
    "decode_large",
    "decode_part",
    "digest",
    "event_time",
    "event_time_ns",
    "gunzip",
    "gunzip_pieces",
    "gunzip_size",
    "helo",
    "new_unpacker",
    "pack_entries",
    "pack_message",
    "packed_entries",
    "ping",
    "pong",
    "split_message",
    "text",
    "unpack_all",
]
