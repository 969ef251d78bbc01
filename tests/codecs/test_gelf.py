"""GELF on the wire (collector/codecs/gelf.py): pure functions on bytes.

Independent implementations where there are some: graypy's chunker produces the chunks our
reassembler must join, Python's gzip/zlib modules produce the payloads, and hypothesis shuffles,
duplicates and cuts them.
"""

from __future__ import annotations

import gzip
import os
import random
import time
import zlib

import graypy.handler
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.codecs.gelf import (
    CHUNK_HEADER_BYTES,
    CHUNK_MAGIC,
    MAX_CHUNKS,
    FrameSplitter,
    GelfError,
    MessageIds,
    Reassembler,
    TimeParser,
    chunk_count,
    compress,
    compression_of,
    decode,
    decompress,
    flatten,
    frame,
    level_code,
    max_payload,
    sanitize_key,
    split_chunks,
)
from collector.codecs.times import TimeFormatter

PEER = ("127.0.0.1", 40000)
MSG = {"version": "1.1", "host": "h", "short_message": "hello", "timestamp": 1714564800.5, "level": 6}


def reason(exc: pytest.ExceptionInfo[GelfError]) -> str:
    return exc.value.reason


# -- compression -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gzip", "zlib", "none"])
def test_compress_decompress_round_trip_and_detection(method):
    raw = orjson.dumps({**MSG, "short_message": "x" * 5000})
    payload = compress(raw, method)
    assert compression_of(payload) == method
    assert decompress(payload) == raw
    assert decode(payload)["short_message"] == "x" * 5000


def test_payloads_made_by_the_standard_library_decode():
    raw = orjson.dumps(MSG)
    assert decode(gzip.compress(raw)) == MSG
    assert decode(zlib.compress(raw, 9)) == MSG
    assert decode(zlib.compress(raw, 1, 31)) == MSG
    assert decode(b"  \n" + raw) == MSG  # leading whitespace: plain JSON


@pytest.mark.parametrize("method", ["gzip", "zlib"])
def test_decompression_bombs_stop_at_the_limit(method):
    bomb = compress(b"\0" * (64 << 20), method, 9)  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    t = time.monotonic()
    with pytest.raises(GelfError) as e:
        decompress(bomb, 1 << 20)
    assert reason(e) == "too_large"
    assert time.monotonic() - t < 0.5  # never inflated past the limit
    small_bomb = compress(b"{" + b" " * 5000 + b"}", method, 9)  # tiny input, small limit
    with pytest.raises(GelfError) as e:
        decode(small_bomb, 2048)
    assert reason(e) == "too_large"


@given(
    data=st.binary(min_size=0, max_size=3000), limit=st.integers(1024, 4096), method=st.sampled_from(["gzip", "zlib"])
)
@settings(max_examples=200, deadline=None)
def test_decompress_never_returns_more_than_the_limit(data, limit, method):
    try:
        out = decompress(compress(data, method), limit)
    except GelfError as e:
        assert e.reason == "too_large"
        assert len(data) > limit
    else:
        assert out == data
        assert len(out) <= limit


def test_corrupt_and_truncated_streams():
    good = compress(orjson.dumps(MSG), "gzip")
    for bad in (good[:-6], good[:12], GZIP_GARBAGE, b"\x78\x9c\x00\x00garbage"):
        with pytest.raises(GelfError) as e:
            decode(bad)
        assert reason(e) == "bad_compression", bad


GZIP_GARBAGE = b"\x1f\x8b\x08\x00" + bytes(range(40))


def test_decode_rejects_what_is_not_gelf():
    cases = {
        b"not json": "bad_json",
        b"{": "bad_json",
        b'{"host":"h","short_message":"\xff"}': "bad_json",  # invalid UTF-8
        b"[1,2]": "not_an_object",
        b'"str"': "not_an_object",
        b'{"host":"h"}': "missing_field",
        b'{"host":"h","short_message":null}': "missing_field",
        b"": "bad_json",
    }
    for payload, why in cases.items():
        with pytest.raises(GelfError) as e:
            decode(payload)
        assert reason(e) == why, payload
    with pytest.raises(GelfError) as e:
        decode(orjson.dumps({**MSG, "short_message": "x" * 5000}), 1024)
    assert reason(e) == "too_large"
    # GELF requires `host`, but Fluent Bit leaves it out when the record has none: the source
    # names the sender instead (tests/sources/test_gelf.py), so the codec lets it through
    assert decode(b'{"short_message":"m"}') == {"short_message": "m"}
    assert decode(b'{"host":1,"short_message":"m"}') == {"host": 1, "short_message": "m"}


# -- chunking --------------------------------------------------------------------------------------
def test_split_chunks_layout():
    payload = os.urandom(5000)
    msg_id = b"ABCDEFGH"
    chunks = split_chunks(payload, msg_id, 1420)
    assert len(chunks) == chunk_count(5000, 1420) == 4
    for i, c in enumerate(chunks):
        assert c[:2] == CHUNK_MAGIC and c[2:10] == msg_id and c[10] == i and c[11] == 4
        assert len(c) <= 1420
    assert b"".join(c[CHUNK_HEADER_BYTES:] for c in chunks) == payload
    assert split_chunks(b"small", msg_id, 1420) == [b"small"]
    # exactly 128 chunks is fine, 129 is not
    assert len(split_chunks(os.urandom(max_payload(512)), msg_id, 512)) == MAX_CHUNKS
    with pytest.raises(GelfError) as e:
        split_chunks(os.urandom(max_payload(512) + 1), msg_id, 512)
    assert reason(e) == "too_many_chunks"


def test_message_ids_are_unique():
    ids = MessageIds()
    seen = {ids.next() for _ in range(10_000)}
    assert len(seen) == 10_000 and all(len(i) == 8 for i in seen)


@given(
    size=st.integers(1421, 60_000),
    seed=st.integers(0, 2**32),
    dups=st.integers(0, 5),
    chunk_size=st.sampled_from([512, 1420, 8192]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reassembly_in_any_order_with_duplicates(size, seed, dups, chunk_size):
    rnd = random.Random(seed)
    payload = rnd.randbytes(size)
    chunks = split_chunks(payload, rnd.randbytes(8), chunk_size)
    if len(chunks) == 1:
        return
    sent = chunks + [rnd.choice(chunks) for _ in range(dups)]
    rnd.shuffle(sent)
    r = Reassembler()
    out = [p for c in sent if (p := r.add(c, PEER, 0.0)) is not None]
    assert out == [payload]  # once, even when duplicates arrive after it completed
    assert r.counts["duplicate_chunk"] == dups
    r.expire(10.0)
    assert len(r) == 0 and r.nbytes == 0 and not r._done


def test_graypys_chunks_are_reassembled():
    raw = orjson.dumps({**MSG, "short_message": os.urandom(20_000).hex()})
    payload = zlib.compress(raw)
    for chunker in (graypy.handler.BaseGELFChunker(1420), graypy.handler.BaseGELFChunker(8154)):
        chunks = list(chunker.chunk_message(payload))
        assert len(chunks) > 1
        random.Random(1).shuffle(chunks)
        r = Reassembler()
        got = [p for c in chunks if (p := r.add(c, PEER, 0.0)) is not None]
        assert len(got) == 1 and decode(got[0]) == orjson.loads(raw)


def test_sets_are_per_peer_and_id():
    payload = os.urandom(3000)
    a = split_chunks(payload, b"11111111", 1420)
    r = Reassembler()
    assert r.add(a[0], ("10.0.0.1", 1), 0) is None
    assert r.add(a[1], ("10.0.0.2", 1), 0) is None  # another peer: another set
    assert r.add(a[1], ("10.0.0.1", 1), 0) is None
    assert r.add(a[2], ("10.0.0.1", 1), 0) == payload
    assert len(r) == 1


def test_bad_chunks_are_counted_not_raised():
    r = Reassembler()
    head = CHUNK_MAGIC + b"12345678"
    assert r.add(head[:8], PEER, 0) is None  # shorter than a header
    assert r.add(head + bytes([0, 0]) + b"x", PEER, 0) is None  # count 0
    assert r.add(head + bytes([5, 3]) + b"x", PEER, 0) is None  # seq past count
    assert r.add(head + bytes([0, 129]) + b"x", PEER, 0) is None  # > 128 chunks
    assert r.add(head + bytes([0, 2]) + b"x", PEER, 0) is None
    assert r.add(head + bytes([1, 3]) + b"y", PEER, 0) is None  # count changed mid-message
    assert r.add(head + bytes([0, 2]) + b"x", PEER, 0) is None  # duplicate
    assert r.add(head + bytes([1, 2]) + b"y", PEER, 0) == b"xy"
    assert r.add(head + bytes([0, 1]) + b"single", PEER, 0) == b"single"  # a set of one
    assert dict(r.counts) == {"bad_chunk": 4, "too_many_chunks": 1, "duplicate_chunk": 1}


def test_incomplete_sets_expire_after_the_timeout():
    r = Reassembler(timeout=5.0)
    for i in range(10):
        c = split_chunks(os.urandom(3000), f"id{i:06d}".encode(), 1420)
        r.add(c[0], PEER, float(i))
    assert len(r) == 10
    assert r.expire(4.9) == 0
    assert r.expire(7.0) == 3  # born at 0, 1, 2
    assert len(r) == 7 and r.counts["chunk_expired"] == 3
    assert r.expire(100.0) == 7
    assert r.nbytes == 0


def test_floods_of_new_ids_stay_bounded_and_good_messages_still_complete():
    r = Reassembler(max_messages=100, max_bytes=1 << 20)
    rnd = random.Random(7)
    good_payload = os.urandom(4000)
    done = []
    for i in range(50_000):
        # a flood: first chunks of messages that never complete, each with a new id
        r.add(CHUNK_MAGIC + rnd.randbytes(8) + bytes([0, 128]) + b"z" * 1000, PEER, 0.0)
        assert len(r) <= 100 and r.nbytes <= 1 << 20
        if i % 10_000 == 0:  # a legitimate message arriving in one go, mid-flood
            for c in split_chunks(good_payload, f"good{i:05d}".encode()[-8:], 1420):
                if (p := r.add(c, PEER, 0.0)) is not None:
                    done.append(p)
    assert done == [good_payload] * 5
    assert r.counts["chunk_evicted"] >= 49_000


def test_a_set_growing_past_the_message_limit_is_dropped_and_absorbed():
    r = Reassembler(max_message_bytes=10_000)
    chunks = split_chunks(os.urandom(20_000), b"bigbigbi", 1420)
    assert all(r.add(c, PEER, 0) is None for c in chunks)
    assert r.counts["too_large"] == 1
    assert r.nbytes == 0  # the parts were released, later chunks absorbed
    assert r.expire(10) == 0  # dead sets are not counted again


def test_byte_cap_evicts_oldest():
    r = Reassembler(max_bytes=1 << 20, max_messages=10_000)
    for i in range(100):
        r.add(CHUNK_MAGIC + f"{i:08d}".encode() + bytes([0, 100]) + b"q" * 60_000, PEER, 0)
        assert r.nbytes <= 1 << 20
    assert r.counts["chunk_evicted"] >= 80


# -- TCP framing ---------------------------------------------------------------------------------
def frames_of(splitter: FrameSplitter, pieces: list[bytes]) -> list[bytes]:
    out = []
    for p in pieces:
        out += splitter.feed(p)
    last = splitter.flush()
    return out + ([last] if last is not None else [])


@given(cuts=st.lists(st.integers(0, 400), max_size=20))
@settings(max_examples=200, deadline=None)
def test_frames_survive_any_split(cuts):
    docs = [orjson.dumps({**MSG, "short_message": f"m{i}" * (i + 1)}) for i in range(10)]
    stream = b"".join(frame(d) for d in docs[:5]) + b"".join(frame(d) + b"\n" for d in docs[5:])
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = frames_of(FrameSplitter(), pieces)
    assert [orjson.loads(f) for f in got] == [orjson.loads(d) for d in docs]


def test_oversize_frames_are_skipped_without_being_held():
    s = FrameSplitter(max_bytes=1000, keep=10)
    ok = b'{"a":1}'
    out = s.feed(ok + b"\0" + b"A" * 600)
    out += s.feed(b"B" * 600)  # past the limit: from here on skipped, not buffered
    assert s._size == 0 and not s._parts
    out += s.feed(b"C" * 5000)
    out += s.feed(b"D\0" + ok + b"\0" + b"E" * 2000 + b"\0" + ok)
    assert out == [ok, ok]
    assert s.take_oversize() == [b"A" * 10, b"E" * 10]
    assert s.flush() == ok  # a last frame without its null byte


def test_a_whitespace_only_frame_is_nothing():
    assert FrameSplitter().feed(b"\0\n\0 \r\n\0") == []


# -- fields, levels, time ------------------------------------------------------------------------
def test_levels():
    assert [level_code(i) for i in range(8)] == list(range(8))
    assert level_code(8) is None and level_code(-1) is None and level_code(True) is None
    assert level_code("3") == 3 and level_code(4.0) == 4
    assert level_code("WARN") == 4 and level_code("info") == 6 and level_code("informational") == 6
    assert level_code("fatal") == 2 and level_code("nonsense") is None


def test_time_round_trip():
    fmt, parse = TimeFormatter().micros, TimeParser()
    assert fmt(1714564800.123456) == "2024-05-01T12:00:00.123456Z"
    assert fmt(1714564800.0) == "2024-05-01T12:00:00.000000Z"
    assert fmt(1714564800.9999999) == "2024-05-01T12:00:01.000000Z"
    assert fmt(1714564800.123) == "2024-05-01T12:00:00.123000Z"
    assert parse("2024-05-01T12:00:00.123456789Z") == 1714564800.123456
    assert parse("2024-05-01T12:00:00Z") == 1714564800.0
    assert parse("2024-05-01T14:00:00.5+02:00") == 1714564800.5
    assert parse("yesterday") is None and parse("2024-05-01T12:00:00") is None
    rnd = random.Random(3)
    for _ in range(2000):
        ts = round(rnd.uniform(0, 4e9), 6)
        assert parse(fmt(ts)) == pytest.approx(ts, abs=1e-6)


def test_field_names_and_values_graylog_accepts():
    assert sanitize_key("com.docker.compose.project") == "com.docker.compose.project"
    assert sanitize_key("a b/c:d$é") == "a_b_c_d__"
    out: dict = {}
    flatten(
        {
            "container": {"name": "web", "image": {"name": "nginx", "tag": ["1.25", "latest"]}, "labels": {"a b": "x"}},
            "ok": True,
            "n": 3,
            "f": 1.5,
            "nan": float("nan"),
            "none": None,
            "objs": [{"a": 1}],
            "empty": {},
        },
        "",
        out,
        {},
    )
    assert out == {
        "_container_name": "web",
        "_container_image_name": "nginx",
        "_container_image_tag": "1.25,latest",
        "_container_labels_a_b": "x",
        "_ok": "true",
        "_n": 3,
        "_f": 1.5,
        "_nan": "nan",
        "_objs": '[{"a":1}]',
    }


def test_the_field_name_cache_stays_bounded_whatever_names_senders_invent():
    names: dict[tuple[str, str], str] = {}
    for i in range(50_000):
        out: dict[str, object] = {}
        flatten({f"k{i}": 1, "stable": {"x": i}}, "", out, names)
        assert out[f"_k{i}"] == 1 and out["_stable_x"] == i
    assert len(names) <= 10_000
