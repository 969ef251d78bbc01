"""Fluent Bit's wire output, byte for byte, written from its source code (Fluent Bit 5.1.1).

Fluent Bit cannot be installed from the registries this project uses, so its output is
reproduced here by following its C code call by call; the result is written to annotated hex
files in tests/interop/fluent-bit/ (``python -m tests.interop.fluent_bit_wire`` rewrites
them; a test checks they are current).  Each builder names the source it follows.  The
sources (github.com/fluent/fluent-bit at 5.1.1, d55459d):

* plugins/out_forward/forward.c: ``flush_forward_mode``, ``flush_forward_compat_mode``,
  ``flush_message_mode``, ``secure_forward_ping``, ``forward_read_ack``, the config map
  (``retain_metadata_in_forward_mode`` true, ``send_options``/``require_ack_response``/
  ``time_as_integer`` false, ``self_hostname`` "localhost" by default);
* plugins/out_forward/forward_format.c: ``append_options`` (options are a map32 with
  ``chunk``, ``size``, ``compressed``, ``fluent_signal``, ``metadata``; the chunk is the base64
  of the first 16 bytes of the SHA-512 of the entries), ``flb_forward_format_transcode``;
* src/flb_log_event_encoder.c ``flb_log_event_encoder_emit_record``: a record as Fluent Bit
  stores it, ``[[EventTime, metadata], body]`` written as ``92 92 d7 00`` + seconds +
  nanoseconds + metadata + body; src/flb_log_event_encoder_dynamic_field.c with src/flb_mp.c
  ``flb_mp_map_header_init``: maps and arrays the encoder builds get 32-bit headers
  (``df``/``dd``) patched with the count at the end, where msgpack_pack_object (a re-packed
  record) writes the shortest header;
* src/flb_log_event_decoder.c and include/fluent-bit/flb_log_event.h: group markers are
  EventTime seconds 0xFFFFFFFF (start) and 0xFFFFFFFE (end);
* plugins/in_tail/tail_file.c: a line becomes the body ``{"log": line}``;
  plugins/in_opentelemetry/opentelemetry_logs.c: metadata ``{"otlp": {...}}``;
* src/flb_gzip.c ``flb_gzip_compress``: header ``1f 8b 08 00 00 00 00 00 00 ff``, a raw
  deflate stream, CRC-32 and length little-endian.  Fluent Bit deflates with miniz
  (level 6, window 15, memLevel 9); these fixtures deflate with zlib at the same settings,
  so the compressed bytes differ from miniz's while the framing is Fluent Bit's;
* plugins/out_gelf/gelf.c (``gelf_send_udp``: gzip when ``compress`` (default true), chunks of
  ``packet_size`` 1420 with the header ``1e 0f`` + 8-byte id (memcpy of a uint64, little-endian
  here) + sequence + count; TCP: the JSON and its NUL) and src/flb_pack_gelf.c
  ``flb_msgpack_to_gelf`` (``{"version":"1.1"``, then ``, "key":value`` in the record's order,
  other keys prefixed ``_``, ``host`` only when the record has one, ``timestamp`` as
  ``%li.%03lu`` last; a level that is no syslog keyword is sent as the string it was).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

VERSION = "Fluent Bit 5.1.1"
DIR = Path(__file__).resolve().parent / "fluent-bit"
T0 = 1714564800  # 2024-05-01T12:00:00Z


@dataclass
class Wire:
    """Bytes with a comment per piece (what the hex files show)."""

    pieces: list[tuple[bytes, str]] = field(default_factory=list)

    def add(self, data: bytes, what: str) -> Wire:
        self.pieces.append((data, what))
        return self

    def extend(self, other: Wire) -> Wire:
        self.pieces.extend(other.pieces)
        return self

    @property
    def data(self) -> bytes:
        return b"".join(d for d, _ in self.pieces)


# -- msgpack as msgpack-c writes it ------------------------------------------------------------------
def pk(obj: Any) -> bytes:
    """msgpack-c's shortest encodings (msgpack_pack_str/_map/_array/_int64): what Python's packer writes."""
    return msgpack.packb(obj, use_bin_type=True)


def map32(n: int) -> bytes:
    """flb_mp_map_header_init: ``msgpack_pack_map(65536)`` (``df``), the count patched at the end."""
    return b"\xdf" + struct.pack(">I", n)


def array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def event_time(sec: int, nsec: int) -> bytes:
    """EventTime, fixext 8 type 0 (flb_time_append_to_msgpack, FLB_TIME_ETFMT_V1_FIXEXT)."""
    return b"\xd7\x00" + struct.pack(">II", sec & 0xFFFFFFFF, nsec)


def encoder_map(items: list[tuple[str, Any]]) -> bytes:
    """A map the log event encoder builds field by field (map32 header, values packed)."""
    return map32(len(items)) + b"".join(pk(k) + pk(v) for k, v in items)


# -- records as Fluent Bit stores them --------------------------------------------------------------
@dataclass
class Record:
    sec: int
    nsec: int
    body: list[tuple[str, Any]]
    metadata: list[tuple[str, Any]] = field(default_factory=list)

    def v2(self) -> Wire:
        """flb_log_event_encoder_emit_record, FLUENT_BIT_V2 direct emit."""
        return (
            Wire()
            .add(b"\x92\x92", "[[time, metadata], body]")
            .add(event_time(self.sec, self.nsec), f"EventTime {self.sec}.{self.nsec:09d}")
            .add(encoder_map(self.metadata), f"metadata {dict(self.metadata)!r}"[:100])
            .add(encoder_map(self.body), f"body {dict(self.body)!r}"[:100])
        )

    def forward_v1(self) -> Wire:
        """flb_forward_format_transcode to FLB_LOG_EVENT_FORMAT_FORWARD (retain metadata off): the
        root array built by the encoder (array32), the body re-packed by msgpack_pack_object."""
        return (
            Wire()
            .add(array32(2), "[time, body] (encoder root array: array32)")
            .add(event_time(self.sec, self.nsec), f"EventTime {self.sec}.{self.nsec:09d}")
            .add(pk(dict(self.body)), "body (msgpack_pack_object: shortest map header)")
        )

    def compat(self) -> Wire:
        """flb_forward_format_forward_compat_mode (time_as_integer): msgpack_pack_uint64(sec)."""
        return (
            Wire()
            .add(b"\x92", "[time, body]")
            .add(pk(self.sec), f"integer seconds {self.sec}")
            .add(pk(dict(self.body)), "body (msgpack_pack_object)")
        )


def group_marker(start: bool, metadata: list[tuple[str, Any]], body: list[tuple[str, Any]]) -> Wire:
    """flb_log_event_encoder_group_init / group_end: the timestamp is -1 / -2 written as uint32."""
    return Record(GROUP_START if start else GROUP_END, 0, body, metadata).v2()


GROUP_START = 0xFFFFFFFF
GROUP_END = 0xFFFFFFFE


def tail_lines(n: int, prefix: str = "line") -> list[Record]:
    """in_tail: one record ``{"log": line}`` per line."""
    return [Record(T0 + i, 123_000_000 + i, [("log", f"{prefix} {i}")]) for i in range(n)]


def otel_chunk() -> list[Wire]:
    """in_opentelemetry: a group (resource and scope), two log records with ``otlp`` metadata."""
    recs = [
        Record(
            T0,
            5,
            [("log", "otel error")],
            [
                (
                    "otlp",
                    {
                        "observed_timestamp": T0 * 10**9 + 9,
                        "timestamp": T0 * 10**9 + 5,
                        "severity_number": 17,
                        "severity_text": "ERROR",
                        "attributes": {"http.method": "GET"},
                        "trace_id": bytes(range(16)),
                        "span_id": bytes(range(8)),
                        "trace_flags": 1,
                    },
                )
            ],
        ),
        Record(T0, 6, [("log", "otel info")], [("otlp", {"severity_number": 9, "trace_flags": 0})]),
    ]
    return [
        group_marker(
            True,
            [("schema", "otlp"), ("resource_id", 0), ("scope_id", 0)],
            [("resource", {"attributes": {"service.name": "shop"}}), ("scope", {"name": "app"})],
        ),
        *(r.v2() for r in recs),
        group_marker(False, [], []),
    ]


# -- out_forward ------------------------------------------------------------------------------------
def chunk_token(data: bytes) -> str:
    """append_options: base64(sha512(entries)[:16])."""
    return base64.b64encode(hashlib.sha512(data).digest()[:16]).decode()


def options(
    size: int | None, chunk: str | None = None, gzip: bool = False, metadata: dict[str, Any] | None = None
) -> Wire:
    """forward_format.c append_options: map32; chunk first (forward_read_ack relies on it)."""
    items: list[tuple[str, Any]] = []
    if chunk is not None:
        items.append(("chunk", chunk))
    if size:
        items.append(("size", size))
    if gzip:
        items.append(("compressed", "gzip"))
    items.append(("fluent_signal", 0))  # FLB_EVENT_TYPE_LOGS
    if metadata:
        items.append(("metadata", metadata))
    return Wire().add(encoder_map(items), f"options {dict(items)!r}"[:110])


def gzip_compress(data: bytes) -> bytes:
    """flb_gzip_compress: its own header, a raw deflate stream, CRC-32 and ISIZE (little-endian)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY)
    raw = c.compress(data) + c.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw + struct.pack("<II", zlib.crc32(data), len(data))


def forward_mode(
    tag: str,
    entries: list[Wire],
    send_options: bool = False,
    require_ack: bool = False,
    gzip: bool = False,
) -> Wire:
    """forward.c flush_forward_mode with retain_metadata_in_forward_mode (the default): the
    chunk's entries as stored; ``compress gzip`` makes it CompressedPackedForward."""
    send_options = send_options or require_ack or gzip
    data = b"".join(e.data for e in entries)
    w = Wire().add(b"\x93" if send_options else b"\x92", f"[tag, entries{', options' if send_options else ''}]")
    w.add(pk(tag), f"tag {tag!r}")
    if gzip:
        z = gzip_compress(data)
        w.add(pk(z)[: len(pk(z)) - len(z)], f"bin({len(z)}): gzip of the entries (CompressedPackedForward)")
        w.add(z, "flb_gzip_compress output")
    else:
        w.add(pk_array_header(len(entries)), f"array of {len(entries)} entries, then the chunk's bytes")
        for e in entries:
            w.extend(e)
    if send_options:
        w.extend(options(len(entries), chunk_token(data) if require_ack else None, gzip))
    return w


def pk_array_header(n: int) -> bytes:
    """msgpack_pack_array(n): the shortest array header."""
    return pk([None] * n)[: len(pk([None] * n)) - n]


def forward_mode_no_metadata(tag: str, records: list[Record], require_ack: bool = False) -> Wire:
    """retain_metadata_in_forward_mode false: entries transcoded to [EventTime, body]."""
    entries = [r.forward_v1() for r in records]
    data = b"".join(e.data for e in entries)
    w = Wire().add(b"\x93" if require_ack else b"\x92", "[tag, entries, options?]").add(pk(tag), f"tag {tag!r}")
    w.add(pk_array_header(len(entries)), f"array of {len(entries)} entries")
    for e in entries:
        w.extend(e)
    if require_ack:
        w.extend(options(len(entries), chunk_token(data)))
    return w


def compat_mode(tag: str, records: list[Record], send_options: bool = False) -> Wire:
    """forward.c flush_forward_compat_mode (time_as_integer true: Fluentd 0.12)."""
    w = Wire().add(b"\x93" if send_options else b"\x92", "[tag, entries, options?]").add(pk(tag), f"tag {tag!r}")
    w.add(pk_array_header(len(records)), f"array of {len(records)} entries")
    for r in records:
        w.extend(r.compat())
    if send_options:
        w.extend(options(len(records)))
    return w


def message_mode(tag: str, records: list[Record], require_ack: bool = False) -> Wire:
    """forward_format.c flb_forward_format_message_mode (a Tag built from the record:
    ``tag $kubernetes['pod']`` ...): one [tag, time, body, options] per record, the metadata
    in the options; with require_ack_response each message is sent and acked alone."""
    w = Wire()
    for r in records:
        w.add(b"\x94", "[tag, time, body, options]").add(pk(tag), f"tag {tag!r}")
        w.add(event_time(r.sec, r.nsec), "EventTime").add(pk(dict(r.body)), "body (msgpack_pack_object)")
        # the chunk token hashes the record as stored (log_decoder.record_base, record_length)
        w.extend(options(0, chunk_token(r.v2().data) if require_ack else None, metadata=dict(r.metadata)))
    return w


def ping(nonce: bytes, shared_key: str, hostname: str = "localhost", salt: bytes | None = None) -> bytes:
    """forward.c secure_forward_ping: [PING, self_hostname, salt (str of 16 random bytes),
    sha512_hex(salt + hostname + nonce + key), "", ""] (no username/password)."""
    salt = salt if salt is not None else SALT
    digest = hashlib.sha512(salt + hostname.encode() + nonce + shared_key.encode()).hexdigest()
    return (
        b"\x96"
        + pk("PING")
        + pk(hostname)
        + b"\xd9\x10"  # str8(16): msgpack_pack_str(16) of raw random bytes
        + salt
        + pk(digest)
        + pk("")
        + pk("")
    )


SALT = bytes(range(0x80, 0x90))  # random bytes in Fluent Bit; not UTF-8, as they usually are not


# -- out_gelf --------------------------------------------------------------------------------------
def gelf_json(body: list[tuple[str, Any]], sec: int, nsec: int, host_key: str | None = None) -> bytes:
    """flb_pack_gelf.c flb_msgpack_to_gelf with ``gelf_short_message_key log`` (and
    ``gelf_host_key`` when given): the record's keys in order, ``timestamp`` appended."""
    out = '{"version":"1.1"'
    for k, value in body:
        v = value
        if k == "log":
            key = "short_message"
        elif host_key is not None and k == host_key:
            key = "host"
        elif k == "level":
            key = "level"
            if isinstance(v, str) and (v.lower() in _GELF_LEVELS or (len(v) == 1 and v in "01234567")):
                v = _GELF_LEVELS.index(v.lower()) if v.lower() in _GELF_LEVELS else int(v)
        else:
            key = "_" + k
        val = f'"{v}"' if isinstance(v, str) else str(v)
        out += f', "{key}":{val}'
    out += f', "timestamp":{sec}.{nsec // 1_000_000:03d}'
    return (out + "}").encode()


_GELF_LEVELS = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]


def gelf_udp(json_doc: bytes, message_id: int, compress: bool = True, packet_size: int = 1420) -> Wire:
    """gelf.c gelf_send_udp: gzip (compress true, or larger than a packet), chunked when still larger."""
    w = Wire()
    if not compress and len(json_doc) <= packet_size:
        return w.add(json_doc, "one datagram: the JSON")
    z = gzip_compress(json_doc)
    if len(z) <= packet_size:
        return w.add(z, f"one datagram: flb_gzip_compress of {json_doc[:60].decode()}...")
    n = -(-len(z) // packet_size)
    for i in range(n):
        head = b"\x1e\x0f" + struct.pack("<Q", message_id) + bytes([i, n])
        w.add(head, f"datagram {i + 1}/{n}: chunk header (magic, id, seq {i}, count {n})")
        w.add(z[i * packet_size : (i + 1) * packet_size], "gzip bytes")
    return w


def gelf_tcp(docs: list[bytes]) -> Wire:
    w = Wire()
    for d in docs:
        w.add(d + b"\0", f"GELF JSON + NUL (flb_io_net_write of len + 1): {d[:60].decode()}...")
    return w


# -- the fixtures ----------------------------------------------------------------------------------
SHARED_KEY = "secret-key"
LINES = tail_lines(3)


def fixtures() -> dict[str, tuple[str, Wire]]:
    """name -> (what it is, bytes)."""
    v2 = [r.v2() for r in LINES]
    levels = [
        Record(T0, 1_000_000, [("log", "with host and level info"), ("level", "info"), ("hostname", "web-1")]),
        Record(T0, 2_000_000, [("log", "level warn, no syslog keyword"), ("level", "warn"), ("hostname", "web-1")]),
    ]
    nohost = [Record(T0 + 1, 3_000_000, [("log", f"no host {i}"), ("pid", 7)]) for i in range(2)]
    big = Record(T0 + 2, 0, [("log", "big " + hashlib.sha512(b"x").hexdigest() * 40)])
    return {
        "forward-default": (
            "out_forward with default settings: Forward mode, entries as stored, [[EventTime, {}], {log}]",
            forward_mode("tail.app", v2),
        ),
        "forward-send-options": (
            "send_options true: options {size, fluent_signal}",
            forward_mode("tail.app", v2, True),
        ),
        "forward-require-ack": (
            "require_ack_response true: options {chunk, size, fluent_signal}; Fluent Bit waits for {ack: chunk}",
            forward_mode("tail.app", v2, require_ack=True),
        ),
        "forward-gzip": (
            "compress gzip: CompressedPackedForward, options {size, compressed, fluent_signal}",
            forward_mode("tail.app", v2, gzip=True),
        ),
        "forward-gzip-ack": (
            "compress gzip + require_ack_response true",
            forward_mode("tail.app", v2, require_ack=True, gzip=True),
        ),
        "forward-otel-groups": (
            "in_opentelemetry -> out_forward (default): group markers and otlp metadata around the records",
            forward_mode("v1_logs", otel_chunk(), require_ack=True),
        ),
        "forward-no-metadata": (
            "retain_metadata_in_forward_mode false (+ require_ack_response): entries transcoded to [EventTime, body]",
            forward_mode_no_metadata("tail.app", LINES, require_ack=True),
        ),
        "forward-time-as-integer": (
            "time_as_integer true (Fluentd 0.12 compat mode), send_options true",
            compat_mode("tail.app", LINES, send_options=True),
        ),
        "forward-message-mode": (
            "tag from the record (record accessor): Message mode, metadata in the options, require_ack_response",
            message_mode("app.from-record", [*LINES[:2], otel_recs_with_metadata()], require_ack=True),
        ),
        "gelf-udp-host-levels": (
            "out_gelf mode udp (compress true), gelf_short_message_key log, gelf_host_key hostname",
            Wire()
            .extend(gelf_udp(gelf_json(levels[0].body, levels[0].sec, levels[0].nsec, "hostname"), 1))
            .extend(gelf_udp(gelf_json(levels[1].body, levels[1].sec, levels[1].nsec, "hostname"), 2)),
        ),
        "gelf-udp-no-host": (
            "out_gelf mode udp, records without a host: no host key at all (what Graylog's spec forbids)",
            Wire().extend(gelf_udp(gelf_json(nohost[0].body, nohost[0].sec, nohost[0].nsec), 3)),
        ),
        "gelf-udp-chunked": (
            "out_gelf mode udp, a record larger than packet_size 1420 after gzip: chunked",
            gelf_udp(gelf_json(big.body, big.sec, big.nsec), 0x0190_ABCD_0000_1234),
        ),
        "gelf-tcp": (
            "out_gelf mode tcp: with host and level, and without host",
            gelf_tcp(
                [
                    gelf_json(levels[0].body, levels[0].sec, levels[0].nsec, "hostname"),
                    gelf_json(levels[1].body, levels[1].sec, levels[1].nsec, "hostname"),
                    *(gelf_json(r.body, r.sec, r.nsec) for r in nohost),
                ]
            ),
        ),
    }


def otel_recs_with_metadata() -> Record:
    return Record(T0 + 5, 0, [("log", "message mode with metadata")], [("otlp", {"severity_text": "WARN"})])


def datagrams(name: str) -> list[bytes]:
    """The datagrams of a UDP fixture file: each starts at a line commented "one datagram" or
    "datagram i/n"."""
    out: list[bytes] = []
    for line in (DIR / f"{name}.hex").read_text().splitlines():
        hexpart, _, comment = line.partition("#")
        if not hexpart.strip():
            continue
        if comment.strip().startswith(("one datagram", "datagram ")):
            out.append(b"")
        out[-1] += bytes.fromhex(hexpart)
    return out


# -- hex files ---------------------------------------------------------------------------------------
def render(name: str, what: str, w: Wire) -> str:
    lines = [
        f"# {name}: {what}",
        f"# {VERSION}; written from its source (see tests/interop/fluent_bit_wire.py for the files and",
        "# functions each piece follows). Hex bytes; '#' starts a comment.",
    ]
    for data, comment in w.pieces:
        for i in range(0, max(len(data), 1), 32):
            part = data[i : i + 32].hex(" ")
            lines.append(f"{part:<96} # {comment}" if i == 0 else part)
    return "\n".join(lines) + "\n"


def load(name: str) -> bytes:
    """The bytes of tests/interop/fluent-bit/<name>.hex."""
    text = (DIR / f"{name}.hex").read_text()
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def write_all() -> None:
    DIR.mkdir(exist_ok=True)
    for name, (what, w) in fixtures().items():
        (DIR / f"{name}.hex").write_text(render(name, what, w))


if __name__ == "__main__":
    write_all()
    sys.exit(0)
