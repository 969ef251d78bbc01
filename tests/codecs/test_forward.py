"""The forward-protocol codec: modes, times, gzip, text safety, the handshake — pure functions."""

from __future__ import annotations

import gzip
import hashlib
import struct

import msgpack
import orjson
import pytest

from collector.codecs.forward import (
    MAX_DEPTH,
    ForwardError,
    ForwardTimes,
    Stamp,
    ack_response,
    check_ping,
    clean,
    digest,
    event_time,
    event_time_ns,
    gunzip,
    helo,
    new_unpacker,
    pack_entries,
    pack_message,
    packed_entries,
    ping,
    pong,
    split_message,
    text,
    unpack_all,
)

T0 = 1714564800  # 2024-05-01T12:00:00Z


def decode(data: bytes, max_bytes: int = 1 << 20) -> list:
    u = new_unpacker(max_bytes, ForwardTimes())
    u.feed(data)
    return list(u)


def raw_str(data: bytes) -> bytes:
    """``data`` framed as a msgpack *str* (as old clients send PackedForward), valid UTF-8 or not."""
    return b"\xdb" + struct.pack(">I", len(data)) + data


# -- time ------------------------------------------------------------------------------------------
def test_event_time_keeps_nanoseconds():
    (t,) = decode(msgpack.packb(event_time(T0, 123456789)))
    assert type(t) is Stamp
    assert t == "2024-05-01T12:00:00.123456789Z"
    assert decode(msgpack.packb(event_time_ns(T0 * 10**9 + 5))) == ["2024-05-01T12:00:00.000000005Z"]


def test_integer_and_float_times():
    f = ForwardTimes()
    assert f.any(T0) == "2024-05-01T12:00:00.000000000Z"
    assert f.any(T0 + 1) == "2024-05-01T12:00:01.000000000Z"  # the cached date part moves on
    assert f.any(T0 + 0.25) == "2024-05-01T12:00:00.250000000Z"
    assert f.any(T0 + 0.123456) == "2024-05-01T12:00:00.123456000Z"  # microseconds, not float noise
    assert f.any(T0 + 0.9999999) == "2024-05-01T12:00:01.000000000Z"
    assert f.any(0) == "1970-01-01T00:00:00.000000000Z"


@pytest.mark.parametrize("bad", ["2024-05-01T12:00:00Z", None, True, [T0], {"t": T0}, -1, 10**13, float("nan")])
def test_what_is_not_a_time_is_refused(bad):
    with pytest.raises(ForwardError) as e:
        ForwardTimes().any(bad)
    assert e.value.reason == "bad time"


@pytest.mark.parametrize(
    "ext",
    [
        msgpack.ExtType(0, b"\x00" * 7),
        msgpack.ExtType(0, b"\x00" * 9),
        msgpack.ExtType(0, struct.pack(">II", 1, 10**9)),
    ],
)
def test_malformed_event_time(ext):
    (bad,) = decode(msgpack.packb(ext))  # decoding goes on (the rest of the message is good) ...
    with pytest.raises(ForwardError) as e:
        ForwardTimes().any(bad)  # ... and only the entry whose time it is is refused
    assert e.value.reason == "bad EventTime"


def test_other_ext_types_and_msgpack_timestamps_become_plain_values():
    huge = msgpack.Timestamp(2**63 - 1, 0)
    obj = decode(msgpack.packb({"x": msgpack.ExtType(5, b"\x01\x02"), "ts": msgpack.Timestamp(T0, 7), "huge": huge}))
    assert obj == [{"x": {"ext_type": 5, "hex": "0102"}, "ts": msgpack.Timestamp(T0, 7), "huge": huge}]
    assert orjson.loads(orjson.dumps(clean(obj[0]))) == {
        "x": {"ext_type": 5, "hex": "0102"},
        "ts": "2024-05-01T12:00:00.000000007Z",
        "huge": "9223372036854775807.000000000",  # no OverflowError: out of any calendar, kept as a number
    }
    assert ForwardTimes().any(msgpack.Timestamp(T0, 7)) == "2024-05-01T12:00:00.000000007Z"
    with pytest.raises(ForwardError) as e:
        ForwardTimes().any(huge)
    assert e.value.reason == "bad time"


# -- modes ---------------------------------------------------------------------------------------
def test_message_mode_with_and_without_option():
    rec = {"log": "hi"}
    assert split_message(["t", T0, rec]) == ("t", "message", (T0, rec), {})
    assert split_message(["t", T0, rec, None]) == ("t", "message", (T0, rec), {})  # fluent-logger-golang
    assert split_message(["t", T0, rec, {"chunk": "c"}]) == ("t", "message", (T0, rec), {"chunk": "c"})


def test_forward_mode():
    entries = [[T0, {"a": 1}], [T0, {"a": 2}]]
    assert split_message(["t", entries]) == ("t", "forward", entries, {})
    assert split_message(["t", entries, {"size": 2}]) == ("t", "forward", entries, {"size": 2})


def test_packed_forward_as_bin_and_as_str():
    stream = pack_entries([(event_time(T0, 1), {"m": "a"}), (T0, {"m": "b"})])
    for wire in (pack_message("t", stream), b"\x92\xa1t" + raw_str(stream)):
        (msg,) = decode(wire)
        tag, mode, payload, opts = split_message(msg)
        assert (tag, mode, payload, opts) == ("t", "packed", stream, {})
        entries = list(packed_entries(payload, opts, ForwardTimes(), 1 << 20))
        assert entries == [["2024-05-01T12:00:00.000000001Z", {"m": "a"}], [T0, {"m": "b"}]]


def test_compressed_packed_forward_with_several_gzip_members():
    a = pack_entries([(T0, {"i": i}) for i in range(3)])
    b = pack_entries([(T0, {"i": i}) for i in range(3, 5)])
    payload = gzip.compress(a) + gzip.compress(b)  # Fluentd appends a member per write
    entries = list(packed_entries(payload, {"compressed": "gzip"}, ForwardTimes(), 1 << 20))
    assert [r["i"] for _, r in entries] == [0, 1, 2, 3, 4]
    assert list(packed_entries(a, {"compressed": "text"}, ForwardTimes(), 1 << 20)) == [
        [T0, {"i": i}] for i in range(3)
    ]


def test_gzip_limits_and_garbage():
    bomb = gzip.compress(b"\0" * (5 << 20))
    with pytest.raises(ForwardError) as e:
        gunzip(bomb, 1 << 20)
    assert e.value.reason == "decompressed too large"
    assert len(gunzip(bomb, 5 << 20)) == 5 << 20
    for bad in (b"not gzip", gzip.compress(b"abc")[:-6]):
        with pytest.raises(ForwardError) as e:
            gunzip(bad, 1 << 20)
        assert e.value.reason == "bad gzip"
    with pytest.raises(ForwardError, match="unknown compression"):
        packed_entries(b"", {"compressed": "zstd"}, ForwardTimes(), 1 << 20)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"tag": "t"}, "not a forward message"),
        ("t", "not a forward message"),
        (["t"], "not a forward message"),
        (["t", 1, 2, 3, 4], "not a forward message"),
        (["t", [], {}, 1], "not a forward message"),
        (["t", T0], "not a forward message"),
        ([1, T0, {}], "bad tag"),
        ([None, [], {}], "bad tag"),
        (["t", [], "opt"], "bad option"),
        (["t", T0, {}, [1]], "bad option"),
    ],
)
def test_wrong_shapes_are_named(msg, reason):
    with pytest.raises(ForwardError) as e:
        split_message(msg)
    assert e.value.reason == reason


def test_a_stream_split_at_every_byte_decodes_the_same():
    wire = (
        msgpack.packb(["a", event_time(T0, 7), {"log": "x" * 300}, {"chunk": "c1"}], use_bin_type=True)
        + pack_message("b", [[T0, {"k": "v"}]])
        + pack_message("c", gzip.compress(pack_entries([(T0, {"n": 1})])), {"compressed": "gzip"})
    )
    whole = decode(wire)
    u = new_unpacker(1 << 20, ForwardTimes())
    got = []
    for i in range(len(wire)):
        u.feed(wire[i : i + 1])
        got.extend(u)
    assert got == whole
    assert len(got) == 3


def test_unpacker_limits():
    u = new_unpacker(1 << 16, ForwardTimes())
    with pytest.raises(msgpack.BufferFull):
        u.feed(b"\xc4\xff" + b"x" * (1 << 17))
    with pytest.raises(ValueError, match="exceeds max_map_len"):
        decode(b"\xdf\xff\xff\xff\xff", 1 << 16)
    with pytest.raises(msgpack.StackError):
        decode(b"\x91" * 5000 + b"\xc0")


# -- text and values ----------------------------------------------------------------------------
def test_invalid_utf8_is_kept_as_surrogates_then_made_json_safe():
    wire = b"\x93\xa1t\x01\x81\xa3log\xa9ok \xff\xfe end"  # ["t", 1, {"log": <str with bytes ff fe>}]
    (obj,) = decode(wire)
    s = obj[2]["log"]
    with pytest.raises(UnicodeEncodeError):
        s.encode()
    assert text(s) == "ok \ufffd\ufffd end"
    assert text("plain") == "plain"
    assert text("caf\u00e9") == "caf\u00e9"


def test_clean_returns_the_same_object_when_nothing_changes():
    rec = {"a": 1, "b": [1, "x", {"c": None}], "d": 1.5, "e": True}
    assert clean(rec) is rec


def test_clean_makes_everything_orjson_safe():
    bad = "\udcff"
    rec = {
        "bytes": b"\xffraw",
        1: "int key",
        b"bkey": "bytes key",
        None: "none key",
        "nested": [{"s": "x" + bad}, b"b"],
        "k" + bad: "bad key",
    }
    out = clean(rec)
    doc = orjson.loads(orjson.dumps(out))
    assert doc["bytes"] == "\ufffdraw"
    assert doc["1"] == "int key"
    assert doc["bkey"] == "bytes key"
    assert doc["None"] == "none key"
    assert doc["nested"] == [{"s": "x\ufffd"}, "b"]
    assert doc["k\ufffd"] == "bad key"


def test_clean_refuses_what_orjson_could_not_encode():
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ForwardError) as e:
        clean({"x": deep})
    assert e.value.reason == "too deeply nested"


# -- acks and handshake -----------------------------------------------------------------------------
def test_ack_echoes_the_chunk_byte_for_byte():
    assert list(unpack_all(ack_response("abc=="))) == [{"ack": "abc=="}]
    weird = b"\xff\x00chunk".decode("utf-8", "surrogateescape")
    raw = ack_response(weird)
    assert b"\xff\x00chunk" in raw


def test_handshake_digests_follow_the_spec():
    nonce, salt, key = b"n" * 16, b"s" * 16, "secret"
    h = helo(nonce, b"")
    assert list(unpack_all(h)) == [["HELO", {"nonce": nonce, "auth": b"", "keepalive": True}]]
    (p,) = unpack_all(ping(nonce, key, "client-host", salt))
    assert p[:3] == ["PING", "client-host", salt]
    assert p[3] == hashlib.sha512(salt + b"client-host" + nonce + key.encode()).hexdigest()
    ok, reason, got_salt, host = check_ping(p, nonce, key)
    assert (ok, reason, got_salt, host) == (True, "", salt, "client-host")
    (answer,) = unpack_all(pong(True, "", salt, nonce, "server-host", key))
    assert answer == ["PONG", True, "", "server-host", digest(salt, "server-host", nonce, key)]


def test_handshake_refusals():
    nonce, salt = b"n" * 16, b"s" * 16
    (p,) = unpack_all(ping(nonce, "wrong", "h", salt))
    assert check_ping(p, nonce, "secret")[:2] == (False, "shared_key mismatch")
    assert check_ping(["t", T0, {}], nonce, "secret")[:2] == (False, "invalid ping message")
    assert check_ping(["PING", 1, 2, 3, 4, 5], nonce, "secret")[:2] == (False, "invalid ping message")
    auth = b"a" * 16
    users = {"alice": "pw"}
    (good,) = unpack_all(ping(nonce, "secret", "h", salt, "alice", "pw", auth))
    assert check_ping(good, nonce, "secret", auth, users)[:2] == (True, "")
    (bad,) = unpack_all(ping(nonce, "secret", "h", salt, "alice", "nope", auth))
    assert check_ping(bad, nonce, "secret", auth, users)[:2] == (False, "username/password mismatch")
    (nobody,) = unpack_all(ping(nonce, "secret", "h", salt, "mallory", "pw", auth))
    assert check_ping(nobody, nonce, "secret", auth, users)[:2] == (False, "username/password mismatch")
    assert list(unpack_all(pong(False, "shared_key mismatch", salt, nonce, "s", "k"))) == [
        ["PONG", False, "shared_key mismatch", "", ""]
    ]


# -- the framer: nothing decoded before it is whole ------------------------------------------------
def test_the_framer_yields_every_message_whole_however_the_stream_is_cut():
    """Small and large messages (past SMALL_OBJECT: decoded part by part), packed payloads of
    1 to 3,000 entries, cut at every size from 1 byte to more than a message."""
    import random

    from collector.codecs.forward import SMALL_OBJECT, Entries, Framer

    rnd = random.Random(13)
    recs = [(event_time(T0, i), {"log": f"line {i} " + "x" * rnd.randint(10, 400)}) for i in range(6000)]
    msgs: list = [
        ["p", pack_entries(recs[i : i + n]), {"size": n}]
        for i, n in ((i, rnd.choice([1, 3, 1000])) for i in range(0, 6000, 500))
    ]
    msgs += [["m", T0, {"log": "x" * rnd.choice([10, SMALL_OBJECT + 10])}] for _ in range(8)]
    msgs += [["f", [[T0, {"n": i}] for i in range(30_000)]]]  # a large Forward-mode message
    rnd.shuffle(msgs)
    wire = b"".join(msgpack.packb(m, use_bin_type=True) for m in msgs)
    for cut in (1, 7, 4096, 65536, 300_000):
        f = Framer(16 << 20, ForwardTimes())
        got = []
        for i in range(0, len(wire), cut):
            f.feed(wire[i : i + cut])
            got.extend(f)
        assert f.buffered == 0 and f.held == 0
        assert [m[0] for m in got] == [m[0] for m in msgs]
        big = next(m for m in got if m[0] == "f")
        assert isinstance(big[1], Entries) and list(big[1]) == [[T0, {"n": i}] for i in range(30_000)]


def test_a_declared_length_costs_only_the_bytes_that_came():
    from collector.codecs.forward import Framer

    f = Framer(1 << 20, ForwardTimes())
    bomb = (b"\xdd" + struct.pack(">I", 1 << 24)) * 1023  # 1,023 nested arrays of 2^24 items
    f.feed(bomb)
    assert list(f) == []
    assert f.buffered == len(bomb)
    with pytest.raises(ForwardError, match="message too large"):
        f.feed(b"\x00" * (1 << 20))
