"""GELF 1.1 on the wire: (de)compression, UDP chunking and reassembly, TCP null framing.

Pure code shared by the GELF source and sink (no sockets, no event loop), so every rule is
testable on bytes:

* a UDP datagram is a whole message (JSON, gzip or zlib: told apart by their magic bytes) or
  one *chunk*: ``0x1e 0x0f``, an 8-byte message id, a sequence number and a count (<= 128),
  then a slice of the message.  :class:`Reassembler` joins chunks arriving in any order,
  ignores duplicates, expires sets not complete after ``timeout`` seconds and bounds its
  memory (pending sets and bytes, the oldest evicted first); what it discards is counted in
  :attr:`Reassembler.counts`, never raised, so a flood costs a counter increment;
* a TCP stream is uncompressed JSON documents, each ended by a null byte
  (:class:`FrameSplitter`; a newline next to the null is tolerated);
* :func:`decompress` stops at ``max_bytes`` of output whatever the input claims
  (decompression bombs), :func:`decode` adds JSON and the required fields;
* :func:`compress` and :func:`split_chunks` are the sending side.

Problems with a message are :class:`GelfError` with a short ``reason`` (a metric label).

message.py has one message (compression, framing, decoding, timestamps, field names), chunks.py the
UDP chunks; both are imported from here.
"""

from __future__ import annotations

from collector.codecs.gelf.chunks import (
    CHUNK_HEADER_BYTES,
    CHUNK_MAGIC,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MessageIds,
    Reassembler,
    chunk_count,
    max_payload,
    split_chunks,
)
from collector.codecs.gelf.message import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_MESSAGE_BYTES,
    GRAYLOG_TAKEN,
    GZIP_MAGIC,
    LEVEL_CODES,
    LEVEL_NAMES,
    MAX_CACHED_NAMES,
    MAX_DEFLATE_RATIO,
    VERSION,
    Compression,
    FrameSplitter,
    GelfError,
    TimeParser,
    check,
    compress,
    compression_of,
    compressor,
    decode,
    decode_sized,
    decompress,
    flatten,
    frame,
    gelf_name,
    level_code,
    sanitize_key,
)

__all__ = [
    "CHUNK_HEADER_BYTES",
    "CHUNK_MAGIC",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GRAYLOG_TAKEN",
    "GZIP_MAGIC",
    "LEVEL_CODES",
    "LEVEL_NAMES",
    "MAX_CACHED_NAMES",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_DEFLATE_RATIO",
    "VERSION",
    "Compression",
    "FrameSplitter",
    "GelfError",
    "MessageIds",
    "Reassembler",
    "TimeParser",
    "check",
    "chunk_count",
    "compress",
    "compression_of",
    "compressor",
    "decode",
    "decode_sized",
    "decompress",
    "flatten",
    "frame",
    "gelf_name",
    "level_code",
    "max_payload",
    "sanitize_key",
    "split_chunks",
]
