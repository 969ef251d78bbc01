"""The referee can say no: tests/peers/graylog reports Graylog's own refusals, not silence.

The sink and source tests assert that Graylog's code refused nothing; these show that a message
Graylog refuses does come back as an error line carrying Graylog's own words.
"""

from __future__ import annotations

import socket

import orjson

from collector.codecs.gelf import compress, split_chunks
from tests.peers.graylog_peer import GraylogPeer


def test_graylogs_refusals_come_back_in_its_own_words(graylog_peer: GraylogPeer):
    good = orjson.dumps({"version": "1.1", "host": "h", "short_message": "fine", "_n": 1})
    datagrams = [
        orjson.dumps({"host": "h", "short_message": "  "}),  # blank: GelfCodec refuses it
        compress(b"{not json", "gzip"),
        orjson.dumps({"host": "", "short_message": "no host"}),
        b"\x1e\x0f" + b"abcdefgh" + bytes([5, 3]) + b"x",  # sequence number past the count
        *split_chunks(compress(good, "zlib") + b"\0" * 3000, b"12345678", 1420)[:1],  # incomplete: waits
        good,
    ]
    with graylog_peer.decoder("udp", count=5) as g:
        host, port = g.address.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, (host, int(port)))
        g.wait()
    errors = g.errors()
    assert len(errors) == 4, errors
    assert 'has empty mandatory "short_message" field' in errors[0]
    assert "JSON is null/could not be parsed (invalid JSON)" in errors[1]
    assert 'has empty mandatory "host" field' in errors[2]
    assert "message chunk was not valid and discarded" in errors[3]
    (stored,) = g.stored()
    assert stored["message"] == "fine" and stored["source"] == "h" and stored["n"] == 1
    assert g.summary["aggregator"]["waiting-messages"] == 2  # the incomplete set (and the bad chunk's)


def test_tcp_frames_graylog_cannot_take(graylog_peer: GraylogPeer):
    stream = b"".join(
        [
            orjson.dumps({"host": "h", "short_message": "one"}) + b"\0",
            b"{" * ((2 << 20) + 1) + b"\0",  # one byte over Graylog's 2 MiB frame limit
            orjson.dumps({"host": "h", "short_message": "two"}) + b"\0",
        ]
    )
    with graylog_peer.decoder("tcp", count=3) as g:
        host, port = g.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(stream)
        g.wait()
    (error,) = g.errors()
    assert "TooLongFrameException" in error and "2097152" in error
    assert [s["message"] for s in g.stored()] == ["one", "two"]
