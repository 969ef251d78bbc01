"""The GELF sink, decoded by an implementation we did not write: Graylog's go-gelf.

tests/peers/gelf-reader is a tiny Go program on github.com/Graylog2/go-gelf: its gelf.Reader
reads our UDP datagrams (chunked, gzip, zlib, plain); TCP and TLS frames are split on the null
byte like go-gelf's own TCP reader and decoded by its gelf.Message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.acks import Ack, Status
from collector.buffers.memory import Channel
from collector.checkpoints import CheckpointStore
from collector.codecs.gelf import CHUNK_MAGIC, Reassembler, decode
from collector.component import Context
from collector.deadletter import DeadLetter
from collector.event import Batch, Fields
from collector.sinks.gelf import GelfEncoder, GelfSink, GelfSinkConfig
from collector.telemetry import Telemetry
from tests.helpers import REPO, read_ndjson, run_cli, tcp_queues, unread_bytes, wait_until
from tests.peers.gelf_reader import GelfReader
from tests.sources.test_gelf import free_port, make_cert

CID = "ab" * 32
META = Fields(
    {
        "host": {"name": "node-1"},
        "container": {
            "id": CID,
            "name": "web",
            "image": {"name": "nginx:1.25", "tag": ["1.25"]},
            "labels": {"com_docker_compose_project": "shop", "team": "core"},
            "compose": {"project": "shop", "service": "web"},
        },
        "tags": ["web", "prod"],
    }
)


def event(i: int, message: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "@timestamp": f"2024-05-01T12:00:{i % 60:02d}.{i:06d}789Z",
        "message": message if message is not None else f"line {i}",
        "stream": "stderr" if i % 5 == 0 else "stdout",
        "log": {"offset": i * 100, "file": {"path": "/var/lib/docker/containers/x/x-json.log"}},
        **extra,
    }


def batch(events: list[dict[str, Any]], meta: Fields = META, tag: str = "web") -> tuple[Batch, list[int]]:
    """A batch whose ack records when it was finalized."""
    done: list[int] = []
    return Batch(events, meta, ack=Ack(lambda _: done.append(1)), tag=tag, source="test"), done


class Harness:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.telemetry = Telemetry()
        self.data_dir = tmp_path / "state"
        ctx = Context(
            data_dir=self.data_dir,
            telemetry=self.telemetry,
            checkpoints=CheckpointStore(self.data_dir),
            deadletter=DeadLetter(self.data_dir, self.telemetry),
        )
        self.sink = GelfSink("out", GelfSinkConfig(type="gelf", inputs=["x"], **config), ctx)
        self.inbox = Channel("out", max_events=100_000, producers=1)

    def run(self, batches: list[Batch], during: Any = None) -> None:
        """Feed ``batches``, close the inbox, run the sink to its end (``during``: a coroutine alongside)."""

        async def main() -> None:
            for b in batches:
                await self.inbox.send(b)
            self.inbox.close()
            jobs = [self.sink.run(self.inbox)] + ([during] if during is not None else [])
            await asyncio.wait_for(asyncio.gather(*jobs), 60)

        asyncio.run(main())

    def value(self, metric: str, **labels: str) -> float:
        return self.telemetry.value(metric, **labels)

    def deadletters(self) -> list[dict[str, Any]]:
        return read_ndjson(self.data_dir / "dead-letter" / "out.ndjson")


# -- rounds: batch: {max_events, max_bytes, timeout} ---------------------------------------------
def test_a_round_is_bounded_by_batch_max_events_and_max_bytes_and_waits_batch_timeout(tmp_path):
    """One `batch:` shape for every component (issue 17); max_round_events was this sink's own."""

    async def rounds(**cfg: Any) -> list[int]:
        h = Harness(tmp_path, address="gelf+udp://127.0.0.1:9", batch=cfg)
        for i in range(10):
            await h.inbox.send(batch([event(i * 10 + j) for j in range(10)])[0])
        sizes = []
        while (first := h.inbox.recv_nowait()) is not None:
            sizes.append(sum(len(b) for b in await h.sink._round(h.inbox, first)))
        return sizes

    assert asyncio.run(rounds(max_events=25)) == [30, 30, 30, 10]
    one = batch([event(j) for j in range(10)])[0].nbytes  # the same for each batch above
    assert asyncio.run(rounds(max_bytes=3 * one)) == [30, 30, 30, 10]
    assert asyncio.run(rounds(max_bytes=3 * one - 1, max_events=100)) == [30, 30, 30, 10]
    assert asyncio.run(rounds(max_bytes=3 * one + 1, max_events=100)) == [40, 40, 20]

    async def late(timeout: float) -> int:
        h = Harness(tmp_path, address="gelf+udp://127.0.0.1:9", batch={"timeout": timeout, "max_events": 2})

        async def later() -> None:  # runs once the round waits (with timeout 0 it never does)
            await h.inbox.send(batch([event(1)])[0])

        task = asyncio.create_task(later())
        n = sum(len(b) for b in await h.sink._round(h.inbox, batch([event(0)])[0]))
        await task
        return n

    assert asyncio.run(late(0)) == 1  # the default: what is waiting, at once
    assert asyncio.run(late(60)) == 2  # the late batch joins the round, which is then full: no 60 s wait


# -- the mapping ---------------------------------------------------------------------------------
def test_shared_fields_too_large_to_cache_are_converted_per_batch_not_kept():
    """Each (shared fields, tag) was cached, 10,000 of them: a document of 1,000 labels each."""
    import tracemalloc

    labels = {f"l{i}": "v" * 40 for i in range(1000)}
    meta = Fields({"host": {"name": "node-1"}, "container": {"id": CID, "labels": labels}})
    enc = GelfEncoder("collector-host")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):  # a sender choosing a new tag each time
        (doc,) = enc.documents(batch([event(i)], meta, tag=f"t{i}")[0])
        assert doc["_container_labels_l0"] == "v" * 40 and doc["_tag"] == f"t{i}"
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 4 << 20, grown


def test_record_to_gelf_fields():
    enc = GelfEncoder("collector-host")
    b, _ = batch(
        [
            event(0),
            event(1, **{"id": "x", "weird key/é": 1, "ok": True, "list": [1, "a"], "nested": [{"a": 1}]}),
            event(2, "", log={"level": "WARN", "offset": 5}),
            event(3, "with full", gelf={"full_message": "full\ntext", "facility": "app", "tags": "client tags"}),
            {"message": "minimal", "log": {"syslog": {"severity": {"code": 2, "name": "critical"}}, "level": "crit"}},
        ]
    )
    d0, d1, d2, d3, d4 = enc.documents(b)
    assert d0 == {
        "version": "1.1",
        "host": "node-1",
        "short_message": "line 0",
        "timestamp": 1714564800.0,
        "level": 3,  # stderr, like Docker's gelf driver
        "_stream": "stderr",
        "_log_offset": 0,
        "_log_file_path": "/var/lib/docker/containers/x/x-json.log",
        "_container_id": CID,
        "_container_name": "web",
        "_container_image_name": "nginx:1.25",
        "_container_image_tag": "1.25",
        "_container_labels_com_docker_compose_project": "shop",
        "_container_labels_team": "core",
        "_container_compose_project": "shop",
        "_container_compose_service": "web",
        "_tags": "web,prod",
        "_tag": "web",
    }
    assert d1["timestamp"] == 1714564801.000001 and d1["level"] == 6 and d1["_stream"] == "stdout"
    assert d1["_id"] == "x"  # Graylog 6.1 stores it as "id" (tests/sinks/test_gelf_graylog.py)
    assert d1["_weird_key__"] == 1 and d1["_ok"] == "true" and d1["_list"] == "1,a" and d1["_nested"] == '[{"a":1}]'
    assert d2["short_message"] == "(empty)"  # Graylog refuses a blank short_message
    assert d2["level"] == 4 and "_log_level" not in d2 and d2["_log_offset"] == 5
    assert d3["full_message"] == "full\ntext" and d3["_facility"] == "app"
    assert d3["_tags"] == "web,prod"  # the record's own tags win over a client's _tags set aside
    assert d4["level"] == 2 and "_log_level" not in d4 and "_log_syslog_severity_code" not in d4
    assert "timestamp" not in d4  # Graylog then uses the time it received it
    for d in (d0, d1, d2, d3, d4):
        assert all(
            k in ("version", "host", "short_message", "full_message", "timestamp", "level") or k[0] == "_" for k in d
        )
    # no shared fields: this machine's name is the host
    (bare,) = enc.documents(Batch([{"message": "m"}]))
    assert bare == {"version": "1.1", "host": "collector-host", "short_message": "m", "level": 6}


# -- UDP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["gzip", "zlib", "none"])
def test_udp_decoded_by_go_gelf(tmp_path, compression):
    rnd = random.Random(4)
    events = [event(i) for i in range(300)]
    bigs = [event(1000 + i, rnd.randbytes(20_000 + 10_000 * i).hex()) for i in range(3)]  # 40-80 KB: chunked
    batches = [batch(events[i : i + 100]) for i in range(0, 300, 100)] + [batch(bigs)]
    with GelfReader() as peer:
        h = Harness(tmp_path, address=f"gelf+udp://{peer.udp}", compression=compression)
        h.run([b for b, _ in batches])
        got = peer.wait_for(303)
        time.sleep(0.2)
        assert peer.errors() == []
    assert all(done == [1] for _, done in batches)
    assert h.value("collector_events_sent_total") == 303
    by_msg = {m["short_message"]: m for m in got}
    assert len(by_msg) == 303
    m0 = by_msg["line 0"]
    assert m0["version"] == "1.1" and m0["host"] == "node-1" and m0["level"] == 3
    assert m0["timestamp"] == pytest.approx(1714564800.0)
    assert m0["_container_name"] == "web" and m0["_container_labels_com_docker_compose_project"] == "shop"
    assert m0["_stream"] == "stderr" and m0["_tag"] == "web" and m0["_log_offset"] == 0
    assert by_msg["line 7"]["level"] == 6 and by_msg["line 7"]["timestamp"] == pytest.approx(1714564807.000007)
    for b in bigs:
        assert by_msg[b["message"]]["_log_offset"] == b["log"]["offset"]


def test_large_chunks_up_to_8192_bytes(tmp_path):
    """go-gelf reads datagrams of at most 1420 bytes: 8 KB chunks are checked with our decoder."""
    rnd = random.Random(8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        h = Harness(tmp_path, address=f"gelf+udp://127.0.0.1:{rx.getsockname()[1]}", chunk_size=8192)
        texts = [rnd.randbytes(30_000).hex() for _ in range(3)]
        h.run([batch([event(i, t) for i, t in enumerate(texts)])[0]])
        r = Reassembler()
        got = []
        while len(got) < 3:
            d = rx.recv(65535)
            assert len(d) <= 8192
            assert d[:2] == CHUNK_MAGIC
            if (p := r.add(d, "x", 0)) is not None:
                got.append(decode(p)["short_message"])
    assert got == texts


def test_messages_too_big_for_128_chunks_are_truncated_or_dead_lettered(tmp_path):
    rnd = random.Random(9)
    huge = rnd.randbytes(400_000).hex()  # 800 KB of hex: ~400 KB gzip'd, > 128 x 1408
    with GelfReader() as peer:
        h = Harness(tmp_path / "a", address=f"gelf+udp://{peer.udp}")
        b, done = batch([event(1, huge), event(2)])
        h.run([b])
        got = peer.wait_for(2)
    assert done == [1]
    cut = next(m for m in got if m["short_message"] != "line 2")
    assert huge.startswith(cut["short_message"]) and 1000 < len(cut["short_message"]) < len(huge)
    assert cut["_gelf_truncated_from"] > 800_000
    assert h.value("collector_errors_total", reason="truncated") == 1

    with GelfReader() as peer:
        h = Harness(tmp_path / "b", address=f"gelf+udp://{peer.udp}", oversize="dead_letter")
        b, done = batch([event(1, huge), event(2)])
        ack = b.ack
        h.run([b])
        got = peer.wait_for(1)
        time.sleep(0.3)
    assert [m["short_message"] for m in peer.messages()] == ["line 2"]
    assert done == [1]
    assert ack is not None and (ack.status, ack.rejected) == (Status.REJECTED, 1)  # the source hears it
    (dl,) = h.deadletters()
    assert dl["reason"].startswith("too_large") and dl["record"]["short_message"] == huge


def test_udp_send_errors_are_counted(tmp_path):
    port = free_port()  # nothing listens: each send after the first draws ECONNREFUSED
    h = Harness(tmp_path, address=f"gelf+udp://127.0.0.1:{port}")
    batches = [batch([event(i)]) for i in range(20)]
    acks = [b.ack for b, _ in batches]

    async def slowly() -> None:
        pass

    h.run([b for b, _ in batches], during=slowly())
    assert all(done == [1] for _, done in batches)  # UDP: finalized anyway, the loss is counted
    failed = sum(a.failed for a in acks if a is not None)  # and the source hears which records
    assert failed >= 1 and failed == h.value("collector_events_dropped_total", reason="send_failed")
    assert h.value("collector_errors_total", reason="udp_econnrefused") >= 1
    assert h.value("collector_events_dropped_total", reason="send_failed") >= 1
    assert h.value("collector_events_sent_total") + h.value("collector_events_dropped_total") == 20
    ok, why = h.sink.health()
    assert not ok and "refused" in why.lower()


# -- TCP and TLS -----------------------------------------------------------------------------------
def test_tcp_and_tls_decoded_by_go_gelf(tmp_path):
    cert, key = make_cert(tmp_path)
    events = [event(i) for i in range(500)] + [event(999, "x" * 300_000)]
    for tls in (False, True):
        with GelfReader(udp=False, tcp=True, tls=(cert, key) if tls else None) as peer:
            cfg: dict[str, Any] = {"address": f"gelf+{'tls' if tls else 'tcp'}://{peer.tcp}"}
            if tls:
                cfg["tls"] = {"ca_file": cert, "server_name": "localhost"}
            h = Harness(tmp_path / str(tls), **cfg)
            batches = [batch(events[i : i + 50]) for i in range(0, len(events), 50)]
            h.run([b for b, _ in batches])
            got = peer.wait_for(len(events))
            assert peer.errors() == []
        assert all(done == [1] for _, done in batches)
        assert sorted(m["_log_offset"] for m in got) == sorted(e["log"]["offset"] for e in events)
        assert {m["host"] for m in got} == {"node-1"}
        assert next(m for m in got if m["_log_offset"] == 99900)["short_message"] == "x" * 300_000


def test_tls_fingerprint_pins_the_certificate(tmp_path):
    """The one client `tls` shape (issue 17): the Elasticsearch sink's `fingerprint` works here too.
    A pinned certificate is accepted without a CA (self-signed); any other is refused, retried and
    finally set aside, never written to."""
    import ssl

    cert, key = make_cert(tmp_path)
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    right = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    with GelfReader(udp=False, tcp=True, tls=(cert, key)) as peer:
        h = Harness(tmp_path / "right", address=f"gelf+tls://{peer.tcp}", tls={"fingerprint": right})
        b, done = batch([event(i) for i in range(5)])
        h.run([b])
        assert len(peer.wait_for(5)) == 5 and done == [1]
        wrong = "00" * 32
        retry = {"initial_backoff": 0.01, "max_backoff": 0.05, "max_elapsed": 0.5}
        h = Harness(tmp_path / "wrong", address=f"gelf+tls://{peer.tcp}", tls={"fingerprint": wrong}, retry=retry)
        b, done = batch([event(100 + i) for i in range(5)])
        h.run([b])
        assert done == [1] and len(h.deadletters()) == 5  # set aside, not sent
        assert h.value("collector_errors_total", reason="tls_fingerprint_mismatch") >= 1
        assert sorted(m["_log_offset"] for m in peer.messages()) == [0, 100, 200, 300, 400]
    with pytest.raises(ValueError, match="64 hex digits"):
        GelfSinkConfig(type="gelf", inputs=["x"], address="gelf+tls://h:1", tls={"fingerprint": "abc"})


def test_tcp_endpoint_down_keeps_the_place_and_acks_only_what_was_written(tmp_path, caplog):
    port = free_port()
    h = Harness(tmp_path, address=f"gelf+tcp://127.0.0.1:{port}", retry={"initial_backoff": 0.1, "max_backoff": 0.5})
    batches = [batch([event(i * 10 + j) for j in range(10)]) for i in range(20)]
    seen: dict[str, Any] = {}

    async def graylog_comes_later() -> None:
        await asyncio.to_thread(
            wait_until, lambda: h.value("collector_errors_total", reason="connect_failed") >= 2, what="two attempts"
        )
        seen["acked_while_down"] = sum(len(d) for _, d in batches)
        seen["health_while_down"] = h.sink.health()
        seen["peer"] = peer = GelfReader(udp=False, tcp=f"127.0.0.1:{port}")
        await asyncio.to_thread(peer.__enter__)

    caplog.set_level(logging.WARNING, logger="collector.sinks.gelf")
    try:
        h.run([b for b, _ in batches], during=graylog_comes_later())
        peer = seen["peer"]
        got = peer.wait_for(200)
    finally:
        if "peer" in seen:
            seen["peer"].__exit__()
    assert seen["acked_while_down"] == 0
    assert not seen["health_while_down"][0] and "cannot connect" in seen["health_while_down"][1]
    assert all(done == [1] for _, done in batches)
    assert sorted(m["short_message"] for m in got) == sorted(f"line {i}" for i in range(200))
    assert f"127.0.0.1:{port}" in caplog.text and "retrying in" in caplog.text
    assert h.value("collector_errors_total", reason="connect_failed") >= 2


def test_tcp_peer_refusing_2000_connections_then_recovering_gets_every_record(tmp_path, caplog):
    """Hours of refused connections compressed into seconds: every record arrives once Graylog
    listens, and the log says so a few times, not once per attempt (it said it 2,000 times)."""
    port = free_port()
    h = Harness(
        tmp_path, address=f"gelf+tcp://127.0.0.1:{port}", retry={"initial_backoff": 0.0005, "max_backoff": 0.002}
    )
    batches = [batch([event(i * 10 + j) for j in range(10)]) for i in range(30)]
    seen: dict[str, Any] = {}

    async def graylog_after_2000_refusals() -> None:
        while h.value("collector_errors_total", reason="connect_failed") < 2_000:
            await asyncio.sleep(0.05)
        seen["acked_while_down"] = sum(len(d) for _, d in batches)
        seen["peer"] = peer = GelfReader(udp=False, tcp=f"127.0.0.1:{port}")
        await asyncio.to_thread(peer.__enter__)

    caplog.set_level(logging.INFO, logger="collector.sinks.gelf")
    try:
        h.run([b for b, _ in batches], during=graylog_after_2000_refusals())
        got = seen["peer"].wait_for(300)
    finally:
        if "peer" in seen:
            seen["peer"].__exit__()
    assert seen["acked_while_down"] == 0
    assert all(done == [1] for _, done in batches)
    assert sorted(m["short_message"] for m in got) == sorted(f"line {i}" for i in range(300))
    refused = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert 1 <= len(refused) <= 5, f"{len(refused)} warnings for one outage"
    assert "connected to" in caplog.text and "again after" in caplog.text


def test_tcp_retry_takes_the_shared_shape_and_max_elapsed_dead_letters(tmp_path):
    port = free_port()  # nothing ever listens there
    retry = {"initial_backoff": 0.01, "max_backoff": 0.05, "max_elapsed": 0.5}
    h = Harness(tmp_path, address=f"gelf+tcp://127.0.0.1:{port}", retry=retry)
    batches = [batch([event(i * 10 + j) for j in range(10)]) for i in range(3)]
    acks = [b.ack for b, _ in batches]
    h.run([b for b, _ in batches])
    assert all(done == [1] for _, done in batches)  # finalized: set aside, not lost, not stuck
    assert [(a.status, a.rejected) for a in acks if a is not None] == [(Status.REJECTED, 10)] * 3
    dl = h.deadletters()
    assert sorted(d["record"]["short_message"] for d in dl) == sorted(f"line {i}" for i in range(30))
    assert all(d["reason"].startswith("retries_exhausted: cannot connect") for d in dl)
    # the older spellings are gone (issue 17: one `retry:` shape for every component)
    with pytest.raises(ValueError, match="backoff_max"):
        GelfSinkConfig(type="gelf", inputs=["x"], address="gelf+tcp://h:1", backoff_max=9)


def test_a_graylog_restart_loses_exactly_what_its_tcp_stack_took_and_it_never_read(tmp_path):
    """GELF has no acknowledgement: a write counts once Graylog's TCP stack has acknowledged every
    byte (collector/sinks/gelf/tcp.py), as far as delivery can be confirmed. A Graylog that stops
    reading, then dies, loses what its kernel had taken and it had not read: the collector cannot
    know. This measures that amount (the receive queue of Graylog's connection at its death) and
    checks the loss is exactly it, nothing more: what came before is there, and after the restart
    the sink reconnects and everything arrives."""
    port = free_port()
    h = Harness(tmp_path, address=f"gelf+tcp://127.0.0.1:{port}", retry={"initial_backoff": 0.05, "max_backoff": 0.2})
    batches = [batch([event(i * 10 + j) for j in range(10)]) for i in range(65)]
    frame_bytes = {
        orjson.loads(doc)["short_message"]: len(doc) + 1 for b, _ in batches for doc in GelfEncoder("x").encode(b)
    }
    peers = [GelfReader(udp=False, tcp=f"127.0.0.1:{port}").__enter__()]
    seen: dict[str, int] = {}

    def sent() -> float:
        return h.value("collector_events_sent_total")

    async def graylog_stalls_dies_and_restarts() -> None:
        first = peers[0]
        for b, _ in batches[:30]:
            await h.inbox.send(b)
        await asyncio.to_thread(first.wait_for, 300)  # read and decoded by the first Graylog
        os.kill(first.proc.pid, signal.SIGSTOP)  # it stops reading
        for b, _ in batches[30:35]:  # 50 records, ~30 KB: Graylog's TCP stack takes them all
            await h.inbox.send(b)
        await asyncio.to_thread(wait_until, lambda: sent() == 350, what="the 50 acknowledged by Graylog's kernel")
        seen["unread"] = unread_bytes(port)
        first.__exit__()  # SIGKILL: what it had not read goes with it
        peers.append(await asyncio.to_thread(GelfReader(udp=False, tcp=f"127.0.0.1:{port}").__enter__))
        for b, _ in batches[35:]:
            await h.inbox.send(b)
        h.inbox.close()

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(h.sink.run(h.inbox), graylog_stalls_dies_and_restarts()), 120)

    try:
        asyncio.run(main())
        peers[1].wait_for(300)
        got = [m["short_message"] for p in peers for m in p.messages()]
    finally:
        for p in peers:
            p.__exit__()
    assert all(done == [1] for _, done in batches)  # all acknowledged upstream, the lost ones too
    lost = {f"line {i}" for i in range(300, 350)}
    assert seen["unread"] == sum(frame_bytes[m] for m in lost)  # exactly what was taken and not read
    assert sorted(got) == sorted(set(frame_bytes) - lost)  # the rest once: before, and after the restart
    assert h.value("collector_events_sent_total") == 650


def test_a_graylog_that_stops_reading_gets_records_acknowledged_only_as_its_tcp_stack_takes_them(tmp_path):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted connections
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    reading = threading.Event()
    received: list[bytes] = []
    conns: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                conns.append(conn)
                threading.Thread(target=consume, args=(conn,), daemon=True).start()

    def consume(conn: socket.socket) -> None:
        reading.wait()
        buf = b""
        with contextlib.suppress(OSError):
            while data := conn.recv(1 << 16):
                buf += data
        received.append(buf)

    threading.Thread(target=serve, daemon=True).start()
    h = Harness(tmp_path, address=f"gelf+tcp://127.0.0.1:{port}", ack_timeout=1.0, retry={"initial_backoff": 0.1})
    batches = [batch([event(i * 500 + j, "m" * 200) for j in range(500)]) for i in range(40)]  # ~12 MB
    seen: dict[str, int] = {}

    def stalled() -> bool:  # the sink holds bytes Graylog's TCP stack has not acknowledged
        return any(q.unacknowledged > 0 for q in tcp_queues(port) if q.remote_port == port)

    async def graylog_wakes_up() -> None:
        await asyncio.to_thread(wait_until, stalled, what="the sink to wait for Graylog's TCP stack")
        seen["acked_while_stalled"] = sum(len(d) for _, d in batches)
        reading.set()

    try:
        h.run([b for b, _ in batches], during=graylog_wakes_up())
        wait_until(lambda: sum(x.count(b"\0") for x in received) >= 20_000 or len(received) >= len(conns) > 0)
    finally:
        srv.close()
        for c in conns:
            c.close()
    # a few rounds fit in the kernels' buffers; the rest waited for Graylog to read
    assert seen["acked_while_stalled"] < 20
    assert all(done == [1] for _, done in batches)
    # a connection the sink gave up on (ack_timeout) ends in a torn frame, which Graylog drops too:
    # only what precedes its last NUL counts
    offsets = {orjson.loads(f)["_log_offset"] for x in received for f in x.split(b"\0")[:-1] if f}
    assert offsets == {e["log"]["offset"] for b, _ in batches for e in b.events}


# -- the pipelines shipped -------------------------------------------------------------------------
def test_pipeline_examples_validate():
    files = [str(REPO / "pipelines" / f) for f in ("json-file-to-graylog.yaml", "gelf-driver-to-elasticsearch.yaml")]
    assert all(os.path.exists(f) for f in files)
    r = run_cli("validate", "-c", *files)
    assert r.returncode == 0, r.stderr
