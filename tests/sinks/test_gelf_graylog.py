"""The GELF sink, decoded by Graylog's own code: Graylog 6.1.4's GelfChunkAggregator and GelfCodec.

tests/peers/graylog runs what a Graylog GELF input runs on every datagram and frame (see its
README), and writes each message as the document Graylog indexes (`Message.toElasticSearchObject`).
So "Graylog stores it" here means Graylog's code, not a whole server: that cannot run here
(README, "Graylog").  Every GELF document our encoder produced is compared with what Graylog
stored: every field kept under its name without the leading ``_``, with the same value.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest

from collector.codecs.gelf import LEVEL_NAMES, compressor, max_payload
from collector.event import Batch, Fields
from collector.sinks.gelf import GelfEncoder
from tests.peers.graylog_peer import GraylogPeer
from tests.sinks.test_gelf import CID, Harness, batch, event

UNICODE = [
    "héllo wörld ✓",
    "日本語のログ行",
    "emoji 🎉🚀 and a ZWJ family 👨‍👩‍👧",
    "שלום עולם (right to left)",
    "combining: e\u0301 a\u0308",
    'quotes " and \\ backslashes and a tab\there',
    "control \x01\x02 bytes inside",
]

LABELS = {f"label_{i:03d}": f"value {i} ✓" for i in range(150)}
META_MANY = Fields(
    {
        "host": {"name": "node-1"},
        "container": {
            "id": CID,
            "name": "web",
            "image": {"name": "nginx:1.25", "tag": ["1.25"]},
            "labels": {"com_docker_compose_project": "shop", **LABELS},
            "compose": {"project": "shop", "service": "web"},
        },
        "tags": ["web", "prod"],
    }
)


def records(n: int = 120, big: int = 3, big_bytes: int = 40_000) -> list[dict[str, Any]]:
    """Plain lines, every level (by name and by syslog code), unicode, and ``big`` lines of ``big_bytes``."""
    rnd = random.Random(20)
    out = [event(i) for i in range(n)]
    for code, name in enumerate(LEVEL_NAMES):
        out.append(event(1000 + code, f"level {name}", log={"offset": 100_000 + code, "level": name}))
        out.append(
            event(
                2000 + code,
                f"syslog code {code}",
                log={"offset": 200_000 + code, "syslog": {"severity": {"code": code, "name": name}}},
            )
        )
    for i, text in enumerate(UNICODE):
        out.append(event(3000 + i, text, log={"offset": 300_000 + i}))
    for i in range(big):  # words and random hex: 40 KB that compress to ~20 KB (several 8 KB chunks)
        vocabulary = ["alpha", "délta", "ε", "🎉"]
        words = " ".join(rnd.choice([*vocabulary, rnd.randbytes(6).hex()]) for _ in range(big_bytes // 6))
        line = words.encode()[:big_bytes].decode(errors="ignore")
        out.append(event(4000 + i, line, log={"offset": 400_000 + i}))
    return out


def graylog_ms(ts: float) -> str:
    """Graylog's stored timestamp for a GELF ``timestamp``: Tools.dateTimeFromDouble (Math.round(x * 1000))."""
    ms = math.floor(ts * 1000 + 0.5)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def expected_by_graylog(doc: dict[str, Any]) -> dict[str, Any]:
    """What Graylog 6.1 stores for one GELF document, when nothing is lost on the way.

    Graylog's rules (GelfCodec, Message.addField): an additional field loses its leading ``_``; a
    name already taken (``_source`` once ``host`` set ``source``) or reserved (``__id``) is skipped;
    string values are trimmed and empty ones skipped; dots in names become ``_`` when indexed.
    """
    out = {
        "message": doc["short_message"].strip(),
        "source": doc["host"],
        "level": doc["level"],
    }
    if "timestamp" in doc:
        out["timestamp"] = graylog_ms(doc["timestamp"])
    if "full_message" in doc:
        out["full_message"] = doc["full_message"].strip()
    for k, v in doc.items():
        if not k.startswith("_"):
            continue
        name = k[1:].replace(".", "_")
        assert name not in out, f"{k!r} would be stored as {name!r}, a name Graylog already gave a value"
        value = v.strip() if isinstance(v, str) else v
        if value != "":
            out[name] = value
    return out


def assert_stored_as_sent(sent: list[dict[str, Any]], stored: list[dict[str, Any]]) -> None:
    """Each GELF document is stored once, with every field, under Graylog's name, with the same value."""
    by_offset = {s["log_offset"]: s for s in stored}
    assert len(by_offset) == len(stored) == len(sent), "a message was lost or duplicated"
    for doc in sent:
        got = by_offset[doc["_log_offset"]]
        want = expected_by_graylog(doc)
        missing = {k: v for k, v in want.items() if k not in got}
        assert not missing, f"Graylog dropped {sorted(missing)} of {doc['short_message'][:60]!r}"
        differ = {k: (v, got[k]) for k, v in want.items() if got[k] != v}
        assert not differ, f"Graylog stored differently (sent, stored): {differ}"


def run_udp(tmp_path: Any, peer: GraylogPeer, recs: list[dict[str, Any]], meta: Fields, **config: Any) -> Any:
    enc = GelfEncoder("collector-host")
    sent = enc.documents(Batch(recs, meta, tag="web"))
    with peer.decoder("udp", count=len(recs)) as g:
        h = Harness(tmp_path, address=f"gelf+udp://{g.address}", **config)
        batches = [batch(recs[i : i + 50], meta) for i in range(0, len(recs), 50)]
        h.run([b for b, _ in batches])
        g.wait()
    assert all(done == [1] for _, done in batches)
    assert h.value("collector_events_sent_total") == len(recs)
    return sent, g, h


# -- UDP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1420, 8192])
@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_udp_decoded_by_graylog(tmp_path, graylog_peer, compression, chunk_size):
    recs = records()
    sent, g, _ = run_udp(tmp_path, graylog_peer, recs, META_MANY, compression=compression, chunk_size=chunk_size)
    assert g.errors() == []
    assert g.summary["aggregator"]["expired-messages"] == 0 and g.summary["invalid_chunks"] == 0
    assert g.summary["aggregator"]["complete-messages"] >= 3  # the 40 KB lines came in chunks
    stored = g.stored()
    assert_stored_as_sent(sent, stored)
    # the fields the README promises, by Graylog's names
    s0 = next(s for s in stored if s["log_offset"] == 0)
    assert s0["source"] == "node-1" and s0["message"] == "line 0" and s0["level"] == 3
    assert s0["timestamp"] == "2024-05-01 12:00:00.000"
    assert s0["container_name"] == "web" and s0["container_id"] == CID
    assert s0["container_image_name"] == "nginx:1.25" and s0["container_image_tag"] == "1.25"
    assert s0["container_labels_com_docker_compose_project"] == "shop" and s0["container_labels_label_149"]
    assert s0["container_compose_project"] == "shop" and s0["container_compose_service"] == "web"
    assert s0["stream"] == "stderr" and s0["tag"] == "web" and s0["tags"] == "web,prod"
    assert s0["log_file_path"] == "/var/lib/docker/containers/x/x-json.log"
    levels = {s["message"]: s["level"] for s in stored}
    for code, name in enumerate(LEVEL_NAMES):
        assert levels[f"level {name}"] == code and levels[f"syslog code {code}"] == code
    assert {s["message"] for s in stored} >= set(UNICODE)
    # microseconds sent, milliseconds kept: 12:00:07.000007789 -> .000, 12:00:07.000123 -> .000
    assert next(s for s in stored if s["log_offset"] == 700)["timestamp"] == "2024-05-01 12:00:07.000"


@pytest.mark.parametrize("chunk_size", [1420, 8192])
def test_a_message_of_exactly_128_chunks_and_one_past_it(tmp_path, graylog_peer, chunk_size):
    """128 chunks is Graylog's limit too; one byte more and our sink cuts the text to fit (flagged)."""
    enc = GelfEncoder("collector-host")
    limit = max_payload(chunk_size)

    def sized(i: int, size: int) -> dict[str, Any]:
        ev = event(i, "x", log={"offset": i})
        base = len(enc.encode(Batch([ev], META_MANY, tag="web"))[0])
        ev["message"] = "x" * (size - base + 1)
        assert len(enc.encode(Batch([ev], META_MANY, tag="web"))[0]) == size
        return ev

    exact, past = sized(1, limit), sized(2, limit + 1)
    with graylog_peer.decoder("udp", count=2) as g:
        h = Harness(tmp_path, address=f"gelf+udp://{g.address}", compression="none", chunk_size=chunk_size)
        h.run([batch([exact, past], META_MANY)[0]])
        g.wait()
    assert g.errors() == []
    by_offset = {s["log_offset"]: s for s in g.stored()}
    assert by_offset[1]["message"] == exact["message"] and "gelf_truncated_from" not in by_offset[1]
    assert past["message"].startswith(by_offset[2]["message"]) and by_offset[2]["gelf_truncated_from"] == limit + 1
    assert g.summary["aggregator"]["total-chunks"] >= 128 + 120
    assert h.value("collector_errors_total", reason="truncated") == 1


def test_compressed_chunks_of_a_hard_to_compress_message(tmp_path, graylog_peer):
    """Random text barely compresses: 127 chunks of gzip'd data, reassembled and inflated by Graylog."""
    rnd = random.Random(3)
    limit = max_payload(1420)
    gzip = compressor("gzip")
    size = limit
    while True:  # random hex compresses to a little over half: find a text that fills 95-100% of 128 chunks
        ev = event(5, rnd.randbytes(size).hex(), log={"offset": 5})
        payload = len(gzip(GelfEncoder("h").encode(Batch([ev], META_MANY))[0]))
        if limit * 0.95 < payload <= limit:
            break
        size = int(size * (limit * 0.975 / payload))
    sent, g, _ = run_udp(tmp_path, graylog_peer, [ev], META_MANY, compression="gzip")
    assert g.errors() == []
    assert_stored_as_sent(sent, g.stored())


# -- TCP -----------------------------------------------------------------------------------------
def test_tcp_decoded_by_graylog(tmp_path, graylog_peer):
    recs = records(n=300, big=5)
    sent = GelfEncoder("collector-host").documents(Batch(recs, META_MANY, tag="web"))
    with graylog_peer.decoder("tcp", count=len(recs)) as g:
        h = Harness(tmp_path, address=f"gelf+tcp://{g.address}")
        batches = [batch(recs[i : i + 50], META_MANY) for i in range(0, len(recs), 50)]
        h.run([b for b, _ in batches])
        g.wait()
    assert g.errors() == []
    assert all(done == [1] for _, done in batches)
    assert_stored_as_sent(sent, g.stored())


# -- names and values Graylog treats specially --------------------------------------------------------
def test_field_names_graylog_reserves_are_kept(tmp_path, graylog_peer):
    """A record's own ``id``, ``source``, ``timestamp``, ``level``, ``streams`` ... reach Graylog under some name."""
    fields = {
        "id": "req-1",
        "source": "billing",
        "timestamp": "yesterday",
        "level": "custom",
        "streams": "s1",
        "full_message": "not the full message",
        "_index": "idx",
        "_source": "raw",
        "gl2_source_input": "forged",
        "user@domain": "kept",
        "ok": True,
        "spaces": "  padded  ",
    }
    rec = event(1, "  indented line  ", log={"offset": 1}, **fields)
    meta = Fields({**META_MANY.data, "container": {**META_MANY.data["container"], "labels": {"empty": "", "a.b": "c"}}})
    sent, g, _ = run_udp(tmp_path, graylog_peer, [rec], meta)
    assert g.errors() == []
    assert_stored_as_sent(sent, g.stored())
    (stored,) = g.stored()
    assert stored["id"] == "req-1"  # Graylog 6.1 keeps _id, as "id"
    assert stored["source"] == "node-1" and stored["source_"] == "billing"
    assert stored["timestamp"] == "2024-05-01 12:00:01.000" and stored["timestamp_"] == "yesterday"
    assert stored["level"] == 6 and stored["level_"] == "custom"
    assert stored["streams"] == [] and stored["streams_"] == "s1"
    assert stored["_index_"] == "idx" and stored["_source_"] == "raw" and stored["gl2_source_input_"] == "forged"
    assert stored["user@domain"] == "kept" and stored["ok"] == "true"
    # Graylog's own rules, not ours: strings trimmed, empty ones not stored, dots in names become _
    assert stored["message"] == "indented line" and stored["spaces"] == "padded"
    assert "container_labels_empty" not in stored and stored["container_labels_a_b"] == "c"


def test_tcp_message_over_graylogs_frame_limit_is_cut_to_fit(tmp_path, graylog_peer):
    """Graylog's GELF TCP input refuses frames over its max_message_size (2 MiB by default)."""
    huge = "y" * (3 << 20)
    recs = [
        event(1, "before", log={"offset": 1}),
        event(2, huge, log={"offset": 2}),
        event(3, "after", log={"offset": 3}),
    ]
    with graylog_peer.decoder("tcp", count=3) as g:
        h = Harness(tmp_path, address=f"gelf+tcp://{g.address}")
        b, done = batch(recs)
        h.run([b])
        g.wait()
    assert g.errors() == []
    assert done == [1]
    by_offset = {s["log_offset"]: s for s in g.stored()}
    assert by_offset[1]["message"] == "before" and by_offset[3]["message"] == "after"
    cut = by_offset[2]
    assert huge.startswith(cut["message"]) and 1 << 20 < len(cut["message"]) < 2 << 20
    assert cut["gelf_truncated_from"] > 3 << 20
    assert h.value("collector_errors_total", reason="truncated") == 1

    with graylog_peer.decoder("tcp", count=2) as g:
        h = Harness(tmp_path / "dl", address=f"gelf+tcp://{g.address}", oversize="dead_letter")
        b, done = batch(recs)
        h.run([b])
        g.wait()
    assert g.errors() == [] and done == [1]
    assert sorted(s["message"] for s in g.stored()) == ["after", "before"]
    (dl,) = h.deadletters()
    assert dl["reason"].startswith("too_large") and dl["record"]["short_message"] == huge
    assert h.value("collector_events_sent_total") == 2


def test_lines_graylog_would_trim_to_nothing_are_kept(tmp_path, graylog_peer):
    """Graylog trims every character up to U+0020 (Java's String.trim) and then drops a message left empty."""
    texts = ["", "   ", "\t\n", "\x00", "\x07\x07", "\x1b", " \x01 ", "\u00a0"]
    recs = [event(i, t, log={"offset": i}) for i, t in enumerate(texts)]
    _, g, _ = run_udp(tmp_path, graylog_peer, recs, META_MANY)
    assert g.errors() == []
    by_offset = {s["log_offset"]: s["message"] for s in g.stored()}
    # a no-break space alone would be kept by Graylog; the sink's "whitespace only" is Python's, a little wider
    assert by_offset == dict.fromkeys(range(len(texts)), "(empty)")
