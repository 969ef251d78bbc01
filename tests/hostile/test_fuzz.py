"""Hypothesis-driven fuzzing of the forward and GELF decoders (bounded: seconds, not minutes).

Whatever the bytes, and wherever the stream is cut: a decoder raises only its own error
(ForwardError, GelfError), what it emits encodes as JSON, and what it holds is bounded by what
it was given.
"""

from __future__ import annotations

import itertools
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.codecs.forward import ForwardError, event_time
from collector.codecs.gelf import CHUNK_MAGIC, FrameSplitter, GelfError, Reassembler, decode_sized
from collector.deadletter import DeadLetter
from collector.sources.fluent_forward import FluentForwardConfig
from collector.sources.fluent_forward.connection import _decoded
from collector.sources.fluent_forward.intake import Intake
from collector.sources.fluent_forward.records import Decoder
from collector.sources.gelf.mapping import Mapper
from collector.telemetry import Telemetry

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
T0 = 1714564800

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
keys = st.text(max_size=10) | st.integers(-1000, 1000)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
times = st.integers(-5, 2**33) | st.floats(allow_nan=True) | st.just(event_time(T0, 1)) | values
entries = st.lists(st.tuples(times, st.dictionaries(st.text(max_size=10), values, max_size=5) | values), max_size=8)


@st.composite
def forward_messages(draw: Any) -> bytes:
    """Forward messages of every mode, mostly well formed, some not."""
    tag = draw(st.text(max_size=10) | values)
    mode = draw(st.sampled_from(["message", "forward", "packed", "gzip", "junk"]))
    option = draw(st.none() | st.fixed_dictionaries({}, optional={"chunk": st.text(max_size=8), "size": values}))
    es = draw(entries)
    if mode == "message":
        t, rec = es[0] if es else (T0, {})
        msg: list[Any] = [tag, t, rec]
    elif mode == "forward":
        msg = [tag, [list(e) for e in es]]
    elif mode == "junk":
        msg = draw(st.lists(values, max_size=5))
    else:
        payload = b"".join(msgpack.packb(list(e), use_bin_type=True) for e in es)
        payload = payload[: draw(st.integers(0, len(payload)))] if draw(st.booleans()) else payload
        if mode == "gzip":
            c = zlib.compressobj(9, zlib.DEFLATED, 31)
            payload = c.compress(payload) + c.flush()
            option = {**(option or {}), "compressed": "gzip"}
        msg = [tag, payload]
    if option is not None and mode != "junk":
        msg.append(option)
    return msgpack.packb(msg, use_bin_type=True)


@pytest.fixture
def decoder_factory(tmp_path: Path) -> Iterator[Any]:
    telemetry = Telemetry()
    dl = DeadLetter(tmp_path, telemetry)
    ctx = types.SimpleNamespace(hostname="h", telemetry=telemetry, deadletter=dl)
    cfg = FluentForwardConfig(type="fluent_forward", max_message_bytes=1 << 16, batch={"max_events": 50})
    yield lambda: Decoder(Intake("fwd", cfg, ctx), "peer:1", lambda chunk: None)
    dl.close()


def run_decoder(dec: Decoder, wire: bytes, cuts: list[int]) -> int:
    """Feed ``wire`` cut at ``cuts``; returns the records emitted; only ForwardError escapes."""
    records = 0
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(points):
        dec.feed(wire[a:b])
        for unit in [*_decoded(dec), dec.take()]:
            for batch in dec.intake.batches(unit):
                for doc in batch.encoded():
                    orjson.loads(doc)  # valid JSON, whatever came in
                records += len(batch)
        assert dec.buffered <= len(wire)
    return records


@FUZZ
@given(wire=st.lists(forward_messages(), min_size=1, max_size=4).map(b"".join), cuts=st.lists(st.integers(0, 4096)))
def test_forward_messages_of_every_shape_cut_anywhere(decoder_factory, wire, cuts):
    try:
        run_decoder(decoder_factory(), wire, cuts)
    except ForwardError:
        pass


@FUZZ
@given(wire=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_forward_random_bytes(decoder_factory, wire, cuts):
    try:
        run_decoder(decoder_factory(), wire, cuts)
    except ForwardError:
        pass


@FUZZ
@given(
    headers=st.lists(
        st.sampled_from([b"\xdd\x01\x00\x00\x00", b"\xdf\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\x91", b"\x81"]),
        min_size=1,
        max_size=400,
    )
)
def test_forward_declared_lengths_cost_only_their_bytes(decoder_factory, headers):
    """Headers declaring huge containers and strings, nested: nothing is built before it is
    whole, so the decoder holds what it was given and no more."""
    dec = decoder_factory()
    wire = b"".join(headers)
    try:
        assert run_decoder(dec, wire, [len(wire) // 2]) == 0
    except ForwardError:
        return
    assert dec.buffered == len(wire)


@FUZZ
@given(data=st.binary(max_size=400) | st.builds(orjson.dumps, json_values).map(lambda b: b[:400]))
def test_gelf_payloads(data):
    for payload in (data, zlib.compress(data), _gzip(data)):
        try:
            msg, size = decode_sized(payload, 1 << 16)
        except GelfError:
            continue
        assert size <= 1 << 16
        meta, _tag, ev = Mapper()(msg)
        orjson.dumps(ev)
        meta.encoded  # noqa: B018 - the shared fields encode too


@FUZZ
@given(
    msg=st.dictionaries(st.text(max_size=12), json_values, max_size=8).map(
        lambda d: {**d, "host": "h", "short_message": "m"}
    )
)
def test_gelf_any_fields_map_to_json(msg):
    meta, _tag, ev = Mapper(["static"])(decode_sized(orjson.dumps(msg))[0])
    orjson.dumps(ev)
    orjson.dumps(meta.data)


@FUZZ
@given(
    datagrams=st.lists(
        st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 140), st.integers(0, 140), st.binary(max_size=64)),
        max_size=60,
    )
)
def test_gelf_chunks_in_any_order_and_shape(datagrams):
    r = Reassembler(timeout=5, max_messages=16, max_bytes=1024, max_message_bytes=512)
    for i, (mid, seq, count, body) in enumerate(datagrams):
        out = r.add(CHUNK_MAGIC + mid + bytes((seq % 256, count % 256)) + body, ("p", 1), i * 0.01)
        assert out is None or len(out) <= 512
        assert r.nbytes <= 1024 + 64 and len(r) <= 16
    r.expire(1e9)
    assert r.nbytes == 0 and len(r) == 0


@FUZZ
@given(
    frames=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\0", b"")), max_size=10), cut=st.integers(1, 50)
)
def test_gelf_tcp_frames_cut_anywhere(frames, cut):
    stream = b"".join(f + b"\0" for f in frames)
    s = FrameSplitter(max_bytes=64, keep=16)
    got: list[bytes] = []
    for i in range(0, len(stream), cut):
        got.extend(s.feed(stream[i : i + cut]))
        assert s.buffered <= 64 + cut
    assert s.flush() is None
    assert got == [f for f in frames if f.strip() and len(f) <= 64]


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
