"""The GELF source fed by Graylog's own client, org.graylog2:gelfclient 1.5.1 (what Graylog's GELF output uses).

tests/peers/graylog runs the client in a JVM: UDP (gzip, zlib, none; chunked past 1,420 bytes, up to
128 chunks) and TCP (null-framed).  Every message carries a sequence number; every one must arrive
exactly once, with its text, level, host, time and fields, and nothing dropped or counted as an error.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.peers.graylog_peer import GraylogPeer
from tests.sources.test_gelf import gelf_collector

UNICODE = ["héllo wörld ✓", "日本語のログ行", "emoji 🎉🚀 👨‍👩‍👧", "שלום עולם", 'quote " backslash \\ tab \t.']


def messages(n: int, transport: str) -> list[dict[str, Any]]:
    """``n`` messages: short ones, every level, unicode, a full_message, and large ones (chunked over UDP)."""
    rnd = random.Random(n)
    out = []
    for i in range(n):
        text = f"{transport} line {i} {UNICODE[i % len(UNICODE)]}"
        if i % 25 == 7:  # 40-150 KB of half-random text: 20-110 chunks of 1,420 bytes once gzip'd
            text += " " + rnd.randbytes(20_000 + (i % 4) * 18_000).hex()
        m: dict[str, Any] = {
            "short_message": text,
            "host": f"app-{i % 3}",
            "timestamp": 1714564800.0 + i + 0.125,
            "level": i % 8,
            "fields": {"seq": i, "user": f"user-{i % 7}", "ratio": i / 4, "transport": transport},
        }
        if i % 10 == 3:
            m["full_message"] = f"Traceback (most recent call last):\n  line {i}\nValueError: boom"
        out.append(m)
    return out


def check(recs: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    by_seq: dict[int, dict[str, Any]] = {}
    for r in recs:
        assert r["seq"] not in by_seq, f"message {r['seq']} arrived twice"
        by_seq[r["seq"]] = r
    assert sorted(by_seq) == [m["fields"]["seq"] for m in sent]
    for m in sent:
        r = by_seq[m["fields"]["seq"]]
        assert r["message"] == m["short_message"]
        assert r["host"]["name"] == m["host"]
        assert r["log"]["syslog"]["severity"]["code"] == m["level"]
        assert r["@timestamp"].endswith(".125000Z")
        assert r["user"] == m["fields"]["user"] and r["ratio"] == m["fields"]["ratio"]
        if "full_message" in m:
            assert r["gelf"]["full_message"] == m["full_message"]


@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_gelfclient_udp_chunked(tmp_path, graylog_peer: GraylogPeer, compression):
    sent = messages(300, "udp")
    if compression == "none":  # the client cannot send more than 128 x 1,420 bytes: keep the big ones smaller
        for m in sent:
            m["short_message"] = m["short_message"][:120_000]
    with gelf_collector(tmp_path, listen=("udp",)) as c:
        n = graylog_peer.send("udp", f"127.0.0.1:{c.ports['udp']}", sent, compression=compression)
        assert n == len(sent)
        recs = c.wait(len(sent))
        assert c.errors() == {}
        assert c.value("collector_events_dropped_total", reason="pipeline_full") == 0
        assert c.value("collector_events_dropped_total", reason="receive_buffer_full") == 0
    check(recs, sent)
    assert max(len(m["short_message"]) for m in sent) > 100_000  # some came in dozens of chunks


def test_gelfclient_tcp(tmp_path, graylog_peer: GraylogPeer):
    sent = messages(2000, "tcp")
    with gelf_collector(tmp_path, listen=("tcp",)) as c:
        n = graylog_peer.send("tcp", f"127.0.0.1:{c.ports['tcp']}", sent, compression="none")
        assert n == len(sent)
        recs = c.wait(len(sent))
        assert c.errors() == {}
    check(recs, sent)
