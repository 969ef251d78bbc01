"""Fluent Bit's forward and GELF output, replayed byte for byte through the collector.

Fluent Bit cannot be installed here; tests/interop/fluent-bit/*.hex hold its wire output in
each mode, written from its source (tests/interop/fluent_bit_wire.py says which file and
function each byte follows).  Issue 15 measured the real Fluent Bit 5.1.1 against the old
collector: 0 of 20,000 records in the default forward mode (while acknowledging them with
require_ack_response), 0 from the gelf output without a host.  Each case here counts the
records in and out, and checks the ack exchange the way Fluent Bit's forward_read_ack does.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Any

import msgpack
import orjson
import pytest

from tests.helpers import BackgroundPipeline, wait_until
from tests.interop import fluent_bit_wire as fb
from tests.sources.test_fluent_forward import Client, forward_pipeline, free_port, pipeline_config
from tests.sources.test_gelf import gelf_collector

LINES = [f"line {i}" for i in range(3)]
STAMPS = [f"2024-05-01T12:00:0{i}.12300000{i}Z" for i in range(3)]
HOST = socket.gethostname()


def test_the_fixtures_are_what_the_builders_write():
    """The hex files are the fixtures; the builders only say how each byte was chosen."""
    for name, (what, w) in fb.fixtures().items():
        assert (fb.DIR / f"{name}.hex").read_text() == fb.render(name, what, w), f"rerun: python -m {fb.__name__}"
        assert fb.load(name) == w.data


def messages(data: bytes) -> list[bytes]:
    """The forward messages of a fixture, each as its bytes."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, timestamp=0)
    u.feed(data)
    out, start = [], 0
    for _ in u:
        out.append(data[start : u.tell()])
        start = u.tell()
    assert start == len(data)
    return out


def chunk_of(msg: bytes) -> str | None:
    obj = msgpack.unpackb(msg, raw=False, strict_map_key=False, timestamp=0, ext_hook=lambda c, d: d)
    opt = obj[-1] if isinstance(obj[-1], dict) else {}
    return opt.get("chunk")


def replay(run: Any, c: Client, name: str) -> list[str | None]:
    """Send a fixture as Fluent Bit does: a message, then (require_ack_response) wait for its ack."""
    chunks = []
    for msg in messages(fb.load(name)):
        c.send(msg)
        chunk = chunk_of(msg)
        if chunk is not None:
            ack = c.recv(timeout=15)
            assert ack == {"ack": chunk}, (name, ack)  # forward_read_ack: same key, same length, same bytes
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize(
    "name",
    [
        "forward-default",
        "forward-send-options",
        "forward-require-ack",
        "forward-gzip",
        "forward-gzip-ack",
        "forward-no-metadata",
    ],
)
def test_forward_modes_deliver_every_record(tmp_path, name):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        chunks = replay(run, c, name)
        recs = run.wait_records(3)
        time.sleep(0.2)  # (nothing more may come)
        recs = run.records()
        assert run.errors() == 0
    assert [r["message"] for r in recs] == LINES
    assert [r["@timestamp"] for r in recs] == STAMPS  # nanoseconds kept
    for r in recs:
        assert r["tags"] == ["tail.app"] and r["host"] == {"name": HOST} and r["observer"] == {"hostname": HOST}
        assert "fluent" not in r  # empty metadata leaves nothing behind
    if "ack" in name:
        assert all(chunks)


def test_time_as_integer(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        replay(run, c, "forward-time-as-integer")
        recs = run.wait_records(3)
    assert [r["message"] for r in recs] == LINES
    assert [r["@timestamp"] for r in recs] == [f"2024-05-01T12:00:0{i}.000000000Z" for i in range(3)]


def test_opentelemetry_groups_and_metadata(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        replay(run, c, "forward-otel-groups")
        recs = {r["message"]: r for r in run.wait_records(2)}
        time.sleep(0.2)
        assert len(run.records()) == 2  # the group start and end carry no record
        assert run.errors() == 0
    err, info = recs["otel error"], recs["otel info"]
    assert err["@timestamp"] == "2024-05-01T12:00:00.000000005Z"
    assert err["trace"] == {"id": bytes(range(16)).hex()} and err["span"] == {"id": bytes(range(8)).hex()}
    assert err["log"] == {"level": "error", "syslog": {"severity": {"code": 3, "name": "error"}}}
    assert err["fluent"]["metadata"]["otlp"]["attributes"] == {"http.method": "GET"}
    assert "severity_number" not in err["fluent"]["metadata"]["otlp"]  # mapped, not repeated
    assert info["log"]["level"] == "info"


def test_message_mode_with_metadata_in_the_options(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        chunks = replay(run, c, "forward-message-mode")  # one message, one ack, at a time
        recs = run.wait_records(3)
    assert len(chunks) == 3 and all(chunks)
    assert [r["message"] for r in recs] == [*LINES[:2], "message mode with metadata"]
    assert recs[2]["log"]["level"] == "warning"  # otlp severity_text WARN from option.metadata
    assert all(r["tags"] == ["app.from-record"] for r in recs)


def test_shared_key_handshake_as_fluent_bit_does_it(tmp_path):
    with forward_pipeline(tmp_path, shared_key=fb.SHARED_KEY) as run, Client(run.port) as c:
        helo = c.recv()
        assert helo[0] == "HELO"
        nonce = helo[1]["nonce"]
        c.send(fb.ping(nonce, fb.SHARED_KEY, hostname="fb-node-1"))
        pong = c.recv()
        # secure_forward_pong: [PONG, true, "", server_hostname, sha512_hex(salt + server_hostname + nonce + key)]
        assert pong[:3] == ["PONG", True, ""]
        expected = hashlib.sha512(fb.SALT + pong[3].encode() + nonce + fb.SHARED_KEY.encode()).hexdigest()
        assert pong[4] == expected
        replay(run, c, "forward-require-ack")
        recs = run.wait_records(3)
    assert [r["message"] for r in recs] == LINES
    assert all(r["host"] == {"name": "fb-node-1"} for r in recs)  # its self_hostname


def test_default_self_hostname_localhost_says_nothing(tmp_path):
    with forward_pipeline(tmp_path, shared_key=fb.SHARED_KEY) as run, Client(run.port) as c:
        nonce = c.recv()[1]["nonce"]
        c.send(fb.ping(nonce, fb.SHARED_KEY))  # self_hostname defaults to "localhost"
        assert c.recv()[1] is True
        replay(run, c, "forward-default")
        recs = run.wait_records(3)
    assert all(r["host"] == {"name": HOST} for r in recs)  # a local client: this host


class LateGraylog:
    """A GELF TCP endpoint that starts listening only when told: until then nothing is delivered."""

    def __init__(self) -> None:
        self.port = free_port()
        self.frames: list[bytes] = []
        self._srv: socket.socket | None = None

    def start(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        assert self._srv is not None
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while data := conn.recv(65536):
                buf += data
                *done, buf = buf.split(b"\0")
                self.frames.extend(done)

    def close(self) -> None:
        if self._srv is not None:
            self._srv.close()


@pytest.mark.parametrize("name", ["forward-require-ack", "forward-gzip-ack"])
def test_require_ack_response_acks_only_what_was_delivered(tmp_path, name):
    graylog = LateGraylog()
    out = tmp_path / "unused.ndjson"
    cfg = pipeline_config(tmp_path, out)
    cfg["sinks"] = {
        "graylog": {
            "type": "gelf",
            "inputs": ["fwd"],
            "address": f"gelf+tcp://127.0.0.1:{graylog.port}",
            "retry": {"initial_backoff": 0.1, "max_backoff": 0.3},
        }
    }
    try:
        with BackgroundPipeline(cfg) as bg:
            src = bg.pipeline.sources["fwd"]
            wait_until(lambda: src.address is not None, 10, what="listening")
            with Client(src.address[1]) as c:
                (msg,) = messages(fb.load(name))
                c.send(msg)
                with pytest.raises(TimeoutError):
                    c.recv(timeout=2)  # Graylog is down: nothing delivered, so no ack (Fluent Bit retries)
                graylog.start()
                assert c.recv(timeout=20) == {"ack": chunk_of(msg)}  # delivered: now the ack
            assert bg.stop() == 0
    finally:
        graylog.close()
    assert [orjson.loads(f)["short_message"] for f in graylog.frames] == LINES


def unreadable(data: bytes) -> bytes:
    """The fixture with every EventTime turned into an ext type nobody knows (5): no entry can be read."""
    return data.replace(b"\xd7\x00\x66\x32", b"\xd7\x05\x66\x32")


def test_no_ack_for_a_message_none_of_whose_entries_can_be_read(tmp_path, caplog):
    """The old collector dead-lettered all of Fluent Bit's entries and still acked the chunk."""
    with forward_pipeline(tmp_path) as run:
        with Client(run.port) as c:
            (msg,) = messages(unreadable(fb.load("forward-require-ack")))
            c.send(msg)
            with pytest.raises(EOFError):
                c.recv(timeout=10)  # closed, and no ack before it: Fluent Bit keeps the chunk and retries
        with Client(run.port) as c:  # the retry, once the cause is fixed, goes through
            replay(run, c, "forward-require-ack")
            recs = run.wait_records(3)
    assert [r["message"] for r in recs] == LINES
    (err,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "127.0.0.1:" in err and "not acknowledged" not in err and "without an ack" in err
    assert "[[dict, map], map]" in err or "[[map, map], map]" in err


# -- gelf -------------------------------------------------------------------------------------------
def test_gelf_udp_and_tcp_with_and_without_host(tmp_path):
    with gelf_collector(tmp_path) as c:
        for name in ("gelf-udp-host-levels", "gelf-udp-no-host", "gelf-udp-chunked"):
            c.udp(*fb.datagrams(name))
        with socket.create_connection(("127.0.0.1", c.ports["tcp"])) as s:
            s.sendall(fb.load("gelf-tcp"))
        recs = c.wait(8)
        errors = c.errors()
    by: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by.setdefault(r["message"][:40], []).append(r)
    info = by["with host and level info"]
    assert len(info) == 2 and all(r["host"] == {"name": "web-1"} for r in info)
    assert all(r["log"]["level"] == "info" and r["log"]["syslog"]["severity"]["code"] == 6 for r in info)
    warn = by["level warn, no syslog keyword"]
    assert all(r["log"]["level"] == "warning" for r in warn)  # Fluent Bit passed "warn" through as text
    nohost = by["no host 0"] + by["no host 1"]
    assert len(nohost) == 3  # udp once, tcp twice
    assert all(r["host"] == {"name": "127.0.0.1"} and r["log"]["flags"] == ["host_from_peer"] for r in nohost)
    assert all(r["pid"] == 7 and r["@timestamp"] == "2024-05-01T12:00:01.003000Z" for r in nohost)
    (big,) = [r for r in recs if r["message"].startswith("big ")]
    assert len(big["message"]) == 4 + 128 * 40
    assert errors == {"missing_host": 4}  # three "no host" and the big one
    assert len(recs) == 8
