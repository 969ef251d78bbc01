"""The GELF source on real sockets: graypy as a client, raw datagrams and frames, hostile input.

The collector runs in-process (BackgroundPipeline: gelf source -> file sink); clients send from
the test over loopback.  tests/e2e/test_gelf_docker.py does the same with Docker's gelf driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import graypy
import orjson
import pytest

from collector.codecs.gelf import CHUNK_MAGIC, compress, split_chunks
from collector.config import ConfigError, validate_config
from tests.helpers import BackgroundPipeline, read_ndjson, wait_until

CID = "c0ffee" + "0" * 58


class Running:
    def __init__(self, bp: BackgroundPipeline, out: Path, data_dir: Path) -> None:
        self.bp = bp
        self.out = out
        self.data_dir = data_dir
        self.source = bp.pipeline.sources["gelf"]
        wait_until(lambda: len(self.source.bound) == len(self.source.config.listen), timeout=10, what="listening")
        self.ports = {url.split(":", 1)[0]: int(url.rsplit(":", 1)[1]) for url in self.source.bound}

    def records(self) -> list[dict[str, Any]]:
        return read_ndjson(self.out)

    def wait(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.records()) >= n, timeout=timeout, what=f"{n} records")
        return self.records()

    def value(self, metric: str, **labels: str) -> float:
        return self.bp.telemetry.value(metric, component="gelf", **labels)

    def errors(self) -> dict[str, float]:
        snap = self.bp.telemetry.snapshot()
        prefix = "collector_errors_total{component=gelf,reason="
        return {k[len(prefix) : -1]: v for k, v in snap.items() if k.startswith(prefix) and v}

    def deadletters(self) -> list[dict[str, Any]]:
        return read_ndjson(self.data_dir / "dead-letter" / "gelf.ndjson")

    def udp(self, *datagrams: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", self.ports["udp"]))


@contextlib.contextmanager
def gelf_collector(
    tmp_path: Path, listen: tuple[str, ...] = ("udp", "tcp"), sink: dict[str, Any] | None = None, **source: Any
) -> Iterator[Running]:
    out = tmp_path / "out.ndjson"
    data_dir = tmp_path / "state"
    cfg = {
        "data_dir": str(data_dir),
        "shutdown_timeout": 3,
        "sources": {"gelf": {"type": "gelf", "listen": [f"{t}://127.0.0.1:0" for t in listen], **source}},
        "sinks": {"out": sink or {"type": "file", "inputs": ["gelf"], "path": str(out), "fsync": "never"}},
    }
    with BackgroundPipeline(cfg) as bp:
        yield Running(bp, out, data_dir)


def docker_msg(i: int, cid: str = CID, name: str = "web-1", level: int = 6, **extra: Any) -> dict[str, Any]:
    """A message shaped exactly like Docker's gelf log driver's (see tests/e2e)."""
    return {
        "version": "1.1",
        "host": "docker-host",
        "short_message": f"line {i}",
        "timestamp": 1714564800.123 + i,
        "level": level,
        "_command": "sh -c echo hi",
        "_container_id": cid,
        "_container_name": name,
        "_created": "2024-05-01T11:00:00.123456789Z",
        "_image_id": "sha256:" + "ab" * 32,
        "_image_name": "registry:5000/app:1.2",
        "_tag": cid[:12],
        **extra,
    }


def logger(name: str, *handlers: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(f"gelf-test-{name}")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    for h in handlers:
        lg.addHandler(h)
    return lg


# -- clients -------------------------------------------------------------------------------------
def test_graypy_udp_and_tcp_including_chunked_messages(tmp_path):
    big = random.Random(1).randbytes(100_000).hex()  # 200 KB: ~75 chunks once zlib'd, ~25 of 8 KB plain
    with gelf_collector(tmp_path) as c:
        udp_z = graypy.GELFUDPHandler("127.0.0.1", c.ports["udp"])  # zlib, chunked past 1420 bytes
        udp_plain = graypy.GELFUDPHandler(
            "127.0.0.1", c.ports["udp"], compress=False, gelf_chunker=graypy.handler.GELFWarningChunker(8154)
        )
        tcp = graypy.GELFTCPHandler("127.0.0.1", c.ports["tcp"])
        for name, h in (("udp-zlib", udp_z), ("udp-plain", udp_plain), ("tcp", tcp)):
            lg = logger(name, h)
            lg.info("hello from %s", name, extra={"user": "bob", "request_id": 42, "container": "not ours"})
            lg.warning("big " + big)
            try:
                raise ValueError("boom")
            except ValueError:
                lg.exception("it failed")
            lg.debug("the end")
            h.close()
        recs = c.wait(12)
        assert c.errors() == {}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_kind.setdefault(r["gelf"]["facility"].removeprefix("gelf-test-"), []).append(r)
    assert set(by_kind) == {"udp-zlib", "udp-plain", "tcp"}
    for kind, rs in by_kind.items():
        hello, bigr, exc, end = sorted(rs, key=lambda r: r["@timestamp"])
        assert hello["message"] == f"hello from {kind}"
        assert hello["log"] == {"level": "info", "syslog": {"severity": {"code": 6, "name": "info"}}}
        assert hello["user"] == "bob" and hello["request_id"] == 42
        assert hello["gelf"]["container"] == "not ours"  # a client's field named like ours goes aside
        assert hello["host"]["name"]
        assert hello["gelf"]["line"] > 0 and hello["gelf"]["file"].endswith("test_gelf.py")
        assert bigr["message"] == "big " + big and bigr["log"]["level"] == "warning"
        assert exc["log"]["syslog"]["severity"]["code"] == 3
        assert "ValueError: boom" in exc["gelf"]["full_message"]
        assert end["log"]["level"] == "debug"
        ts = hello["@timestamp"]
        assert len(ts) == len("2024-05-01T12:00:00.123456Z") and ts.endswith("Z")
    assert len(recs) == 12


def test_docker_driver_messages_become_container_records(tmp_path):
    msgs = [docker_msg(i, level=3 if i % 2 else 6) for i in range(4)]
    other = docker_msg(99, cid="d" * 64, name="/db")
    with gelf_collector(tmp_path) as c:
        c.udp(*(compress(orjson.dumps(m), "gzip") for m in msgs))
        c.udp(
            compress(orjson.dumps(other), "zlib"),
            orjson.dumps({**docker_msg(5), "_stream": "stdout", "_x.y": 1, "odd.key": 2}),
        )
        recs = c.wait(6)
        # the batches: shared fields per container, which docker_metadata's fast path reads
        items = [(orjson.dumps(m), ("127.0.0.1", 1)) for m in [*msgs, other, msgs[0]]]
        batches, done = c.source._to_batches(items, udp=True)
        assert done == len(items)
    r0 = next(r for r in recs if r["message"] == "line 0")
    assert r0 == {
        "@timestamp": "2024-05-01T12:00:00.123000Z",
        "message": "line 0",
        "log": {"level": "info", "syslog": {"severity": {"code": 6, "name": "info"}}},
        "stream": "stdout",
        "host": {"name": "docker-host"},
        "observer": {"hostname": socket.gethostname()},
        "tags": [CID[:12]],
        "container": {
            "id": CID,
            "name": "web-1",
            "image": {"name": "registry:5000/app:1.2", "tag": ["1.2"], "hash": {"all": ["sha256:" + "ab" * 32]}},
        },
        "docker": {"container": {"command": "sh -c echo hi", "created": "2024-05-01T11:00:00.123456789Z"}},
    }
    assert next(r for r in recs if r["message"] == "line 1")["stream"] == "stderr"  # Docker: level 3 is stderr
    db = next(r for r in recs if r["message"] == "line 99")
    assert db["container"]["name"] == "db" and db["container"]["id"] == "d" * 64
    r5 = next(r for r in recs if r["message"] == "line 5")
    assert r5["stream"] == "stdout" and r5["x_y"] == 1 and r5["gelf"] == {"odd_key": 2}
    assert [len(b) for b in batches] == [5, 1]
    web, db_batch = batches
    assert web.meta.get("container.id") == CID and web.tag == CID[:12] and web.ack is None
    assert web.meta.data["tags"] == [CID[:12]] and web.meta.get("host.name") == "docker-host"
    assert db_batch.meta.get("container.id") == "d" * 64
    assert "container" not in web.events[0]  # per-container fields live in the shared part only
    assert len({*web.ids, *db_batch.ids}) == 6 and all(len(i) == 32 for i in web.ids)


def test_batch_max_bytes_bounds_what_is_decoded_at_once(tmp_path):
    """``batch: {max_events, max_bytes, timeout}`` (issue 17): max_bytes is how much is decoded
    (decompressed) and emitted together; the rest waits for the next round."""
    with gelf_collector(tmp_path, batch={"max_bytes": 1024}) as c:
        items = [(orjson.dumps(docker_msg(i) | {"short_message": "x" * 300}), ("127.0.0.1", 1)) for i in range(10)]
        batches, done = c.source._to_batches(items, udp=True)
        assert 1 < done < len(items)  # stopped once past 1 KiB
        assert sum(len(b) for b in batches) == done
        batches, rest = c.source._to_batches(items, udp=True, start=done)
        assert done < rest


def test_chunked_udp_in_any_order_with_duplicates_and_every_compression(tmp_path):
    rnd = random.Random(5)
    sent: list[str] = []
    datagrams: list[bytes] = []
    for i, method in enumerate(["gzip", "zlib", "none"] * 4):
        text = f"chunked {i} " + rnd.randbytes(6000 + i * 3000).hex()
        sent.append(text)
        payload = compress(orjson.dumps({"host": "h", "short_message": text, "_i": i}), method)
        chunks = split_chunks(payload, rnd.randbytes(8), 1420)
        assert len(chunks) > 1
        chunks += chunks[:2]  # duplicates
        rnd.shuffle(chunks)
        datagrams += chunks
    with gelf_collector(tmp_path, listen=("udp",)) as c:
        c.udp(*datagrams)
        recs = c.wait(len(sent))
        time.sleep(0.3)
        assert sorted(r["message"] for r in c.records()) == sorted(sent)
        wait_until(lambda: c.errors().get("duplicate_chunk") == 24, timeout=5)
    assert sorted(r["i"] for r in recs) == list(range(12))


def test_tcp_frames_split_anywhere_with_newlines_and_a_last_frame_without_null(tmp_path):
    docs = [orjson.dumps({"version": "1.1", "host": "h", "short_message": f"tcp {i}", "_n": i}) for i in range(300)]
    stream = b"".join(d + (b"\0\n" if i % 3 == 0 else b"\0") for i, d in enumerate(docs[:-1])) + docs[-1]
    with gelf_collector(tmp_path, listen=("tcp",)) as c:
        with socket.create_connection(("127.0.0.1", c.ports["tcp"])) as s:
            rnd = random.Random(2)
            pos = 0
            while pos < len(stream):
                step = rnd.randint(1, 700)
                s.sendall(stream[pos : pos + step])
                pos += step
        # a second connection at the same time as a third
        with (
            socket.create_connection(("127.0.0.1", c.ports["tcp"])) as a,
            socket.create_connection(("127.0.0.1", c.ports["tcp"])) as b,
        ):
            a.sendall(orjson.dumps({"host": "a", "short_message": "from a"}) + b"\0")
            b.sendall(orjson.dumps({"host": "b", "short_message": "from b"}) + b"\0")
        recs = c.wait(302)
        assert c.errors() == {}
    assert sorted(r["n"] for r in recs if "n" in r) == list(range(300))
    assert {r["message"] for r in recs} >= {"from a", "from b", "tcp 299"}


def make_cert(d: Path) -> tuple[str, str]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_a_tls_client_that_never_says_hello_is_cut_after_handshake_timeout(tmp_path):
    """The handshake was asyncio's (60 s, not configurable, not counted): a client holding a
    TLS connection open without a ClientHello held its slot a minute."""
    cert, key = make_cert(tmp_path)
    tls = {"cert_file": cert, "key_file": key}
    with gelf_collector(tmp_path, listen=("tls",), tls=tls, handshake_timeout=1) as c:
        with socket.create_connection(("127.0.0.1", c.ports["tls"])) as s:
            s.settimeout(15)
            t0 = time.monotonic()
            assert s.recv(1) == b""  # closed by the server
            assert time.monotonic() - t0 < 10
        wait_until(lambda: c.errors().get("tls_failed") == 1, 5, what="the failure counted")


def test_tls_listener(tmp_path):
    cert, key = make_cert(tmp_path)
    with gelf_collector(tmp_path, listen=("tls",), tls={"cert_file": cert, "key_file": key}) as c:
        ctx = ssl.create_default_context(cafile=cert)
        with (
            socket.create_connection(("127.0.0.1", c.ports["tls"])) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            for i in range(50):
                s.sendall(orjson.dumps({"host": "h", "short_message": f"secret {i}"}) + b"\0")
            # a clean TLS close: closing with the server's session tickets unread would send a RST,
            # and the kernel discards what the server had not read yet
            s.unwrap()
        recs = c.wait(50)
        # a client that does not speak TLS is refused, the server goes on
        with socket.create_connection(("127.0.0.1", c.ports["tls"])) as plain:
            plain.sendall(orjson.dumps({"host": "h", "short_message": "in clear"}) + b"\0")
        time.sleep(0.3)
        assert len(c.records()) == 50
    assert sorted(r["message"] for r in recs) == sorted(f"secret {i}" for i in range(50))


def test_config_errors():
    base = {"sinks": {"o": {"type": "console", "inputs": ["g"]}}}
    for src, why in (
        ({"type": "gelf", "listen": ["tls://127.0.0.1:1"]}, "tls"),
        ({"type": "gelf", "listen": ["http://127.0.0.1:1"]}, "udp://HOST:PORT"),
        ({"type": "gelf", "listen": ["udp://127.0.0.1"]}, "HOST:PORT"),
        ({"type": "gelf", "listen": []}, "at least 1"),
        ({"type": "gelf", "listen": "udp://127.0.0.1:1", "bogus": 1}, "bogus"),
    ):
        with pytest.raises(ConfigError) as e:
            validate_config({**base, "sources": {"g": src}})
        assert why in str(e.value), str(e.value)
    one = validate_config({**base, "sources": {"g": {"type": "gelf", "listen": "udp://127.0.0.1:12201"}}})
    assert one.sources["g"].listen == ["udp://127.0.0.1:12201"]


def test_a_message_without_host_is_kept_under_the_senders_address(tmp_path, caplog):
    """Fluent Bit's gelf output sends no `host` when the record has none: all were refused."""
    with gelf_collector(tmp_path) as c:
        c.udp(*(compress(orjson.dumps({"short_message": f"udp {i}", "level": 6}), "gzip") for i in range(3)))
        with socket.create_connection(("127.0.0.1", c.ports["tcp"])) as s:
            s.sendall(b"".join(orjson.dumps({"version": "1.1", "short_message": f"tcp {i}"}) + b"\0" for i in range(3)))
            s.sendall(orjson.dumps({"short_message": "host is a number", "host": 42}) + b"\0")
            s.sendall(orjson.dumps({"short_message": "named", "host": "web-7"}) + b"\0")
        recs = by_message(c.wait(8))
        errors = c.errors()
    assert errors == {"missing_host": 7}  # counted, not refused: nothing dead-lettered
    assert not c.deadletters()
    for m in ["udp 0", "udp 2", "tcp 0", "tcp 2", "host is a number"]:
        assert recs[m]["host"] == {"name": "127.0.0.1"}, m  # the sender's address
        assert recs[m]["log"]["flags"] == ["host_from_peer"], m
        assert recs[m]["observer"] == {"hostname": socket.gethostname()}
    assert recs["host is a number"]["gelf"]["host"] == 42  # what it said is kept
    assert recs["named"]["host"] == {"name": "web-7"} and "log" not in recs["named"]
    assert recs["udp 1"]["log"]["level"] == "info"
    said = [r.getMessage() for r in caplog.records if "have no `host`" in r.getMessage()]
    assert len(said) == 1 and "127.0.0.1" in said[0]


def by_message(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["message"]: r for r in records}


# -- hostility and overload ------------------------------------------------------------------------
def hostile_datagrams(rnd: random.Random) -> list[tuple[str, bytes]]:
    """(expected error reason, datagram): everything a hostile or broken sender may send."""
    good = orjson.dumps({"host": "h", "short_message": "x"})
    out = [
        ("bad_json", b"not json at all"),
        ("bad_json", b""),
        ("bad_json", b'{"host": "h", "short_message": "unterminated'),
        ("not_an_object", b"[1, 2, 3]"),
        ("missing_field", orjson.dumps({"host": "h"})),
        ("missing_host", orjson.dumps({"short_message": "no host"})),  # accepted, counted (Fluent Bit sends these)
        ("missing_host", orjson.dumps({"host": "", "short_message": "empty host"})),
        ("bad_compression", compress(good, "gzip")[:-8]),
        ("bad_compression", b"\x1f\x8b" + rnd.randbytes(200)),
        ("too_large", compress(b"{" + b" " * (8 << 20) + b"}", "gzip", 9)),  # a bomb: 8 MiB in ~8 KB
        ("too_large", compress(b"\0" * (50 << 20), "zlib", 9)[:60000]),  # bigger bomb, cut to one datagram
        ("too_many_chunks", CHUNK_MAGIC + b"toomany!" + bytes([0, 200]) + b"{}"),
        ("bad_chunk", CHUNK_MAGIC + b"short"),
        ("bad_chunk", CHUNK_MAGIC + b"badseq!!" + bytes([9, 3]) + b"{}"),
    ]
    for _ in range(200):  # random bytes, some shaped like chunks or compressed payloads
        head = rnd.choice([b"", b"\x1f\x8b", b"\x78\x9c", CHUNK_MAGIC, b"{"])
        out.append(("", head + rnd.randbytes(rnd.randint(0, 3000))))
    return out


def test_hostile_input_is_counted_and_never_stops_good_traffic(tmp_path):
    rnd = random.Random(1234)
    hostile = hostile_datagrams(rnd)
    # chunk floods: thousands of first chunks with new ids, and sets that never complete
    flood = [CHUNK_MAGIC + rnd.randbytes(8) + bytes([0, 128]) + b"z" * 1000 for _ in range(3000)]
    truncated = split_chunks(
        compress(orjson.dumps({"host": "h", "short_message": "y" * 9000}), "none"), b"trunc!!!", 1420
    )
    t0 = time.monotonic()
    with gelf_collector(tmp_path, max_pending_messages=500, chunk_timeout=0.5) as c:
        good_sent = 0
        with socket.create_connection(("127.0.0.1", c.ports["tcp"])) as tcp:
            for i in range(0, len(hostile), 10):
                c.udp(*(d for _, d in hostile[i : i + 10]))
                c.udp(compress(orjson.dumps(docker_msg(good_sent)), "gzip"))
                good_sent += 1
                # TCP: garbage frames between good ones
                tcp.sendall(rnd.randbytes(50).replace(b"\0", b"") + b"\0" + orjson.dumps(docker_msg(good_sent)) + b"\0")
                good_sent += 1
            for i in range(0, len(flood), 300):
                c.udp(*flood[i : i + 300])
                c.udp(orjson.dumps(docker_msg(good_sent)))
                good_sent += 1
            c.udp(*truncated[:-1])  # never completed
            big = compress(orjson.dumps(docker_msg(good_sent, short_message="chunked " * 2000)), "gzip", 0)
            c.udp(*split_chunks(big, b"good!!!!", 1420))
            good_sent += 1
            tcp.sendall(b"A" * (2 << 20) + b"\0" + orjson.dumps(docker_msg(good_sent)) + b"\0")  # oversize frame
            good_sent += 1

        def goods() -> list[dict[str, Any]]:
            return [r for r in c.records() if r.get("host", {}).get("name") == "docker-host"]

        wait_until(lambda: len(goods()) == good_sent, timeout=30, what="the good messages")
        wait_until(lambda: c.errors().get("chunk_expired"), timeout=10, what="the incomplete set to expire")
        errors = c.errors()
        dead = c.deadletters()
    assert time.monotonic() - t0 < 60
    assert sorted(r["message"] for r in goods() if r["message"].startswith("line")) == sorted(
        f"line {i}" for i in range(good_sent) if i != good_sent - 2
    )
    for why, _ in hostile:
        if why:
            assert errors.get(why), (why, errors)
    assert errors.get("chunk_evicted", 0) >= 2000  # the flood pushed itself out
    assert errors.get("chunk_expired", 0) >= 1  # the truncated message
    assert errors["too_large"] >= 3  # two bombs and the oversize TCP frame
    # malformed messages are set aside with the sender's address; chunk-level noise is not
    assert dead and all(d["origin"]["peer"].startswith("127.0.0.1:") for d in dead)
    assert {d["reason"].split(":")[0] for d in dead} <= {
        "bad_json",
        "not_an_object",
        "missing_field",
        "bad_compression",
        "too_large",
    }
    assert len(dead) < len(hostile) + 100


def test_full_pipeline_drops_udp_visibly_and_pushes_back_on_tcp(tmp_path):
    # the sink: Graylog over TCP, down; its buffer holds 50 records: the pipeline fills up
    dead_port = free_port()
    sink = {
        "type": "gelf",
        "inputs": ["gelf"],
        "address": f"gelf+tcp://127.0.0.1:{dead_port}",
        "buffer": {"max_events": 50},
        "retry": {"max_backoff": 0.5},
    }
    with gelf_collector(tmp_path, sink=sink, batch={"max_events": 20}) as c:
        n = 3000
        for i in range(0, n, 100):
            c.udp(*(orjson.dumps({"host": "h", "short_message": f"u{j}"}) for j in range(i, i + 100)))
            time.sleep(0.005)

        def accounted() -> bool:
            got = c.value("collector_events_received_total")
            dropped = c.value("collector_events_dropped_total")
            return got + dropped == n

        wait_until(accounted, timeout=10, what="every datagram received or counted as dropped")
        assert c.value("collector_events_dropped_total", reason="pipeline_full") > n / 2
        assert c.value("collector_events_received_total") < 500
        # TCP is not dropped: the collector stops reading and the sender blocks
        dropped_before = c.value("collector_events_dropped_total")
        with socket.create_connection(("127.0.0.1", c.ports["tcp"])) as s:
            s.settimeout(3)
            frame = orjson.dumps({"host": "h", "short_message": "t" * 200}) + b"\0"
            sent = 0
            with pytest.raises(TimeoutError):
                for _ in range(200_000):
                    s.sendall(frame)
                    sent += 1
            assert sent < 200_000
        assert c.value("collector_events_dropped_total") == dropped_before  # blocked for 3 s, nothing dropped


def test_kernel_drops_are_counted_too(tmp_path):
    # a tiny receive buffer and a burst: the kernel drops datagrams, the source counts them
    with gelf_collector(tmp_path, listen=("udp",), receive_buffer_bytes=4096) as c:
        n = 20_000
        payload = compress(orjson.dumps(docker_msg(1)), "gzip")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", c.ports["udp"]))
            for _ in range(n):
                s.send(payload)

        def accounted() -> bool:
            return c.value("collector_events_received_total") + c.value("collector_events_dropped_total") == n

        wait_until(accounted, timeout=10, what="received + dropped == sent")
        assert c.value("collector_events_dropped_total", reason="receive_buffer_full") > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gzip_payload_from_pythons_gzip_module(tmp_path):
    with gelf_collector(tmp_path, listen=("udp",)) as c:
        import gzip

        c.udp(gzip.compress(orjson.dumps({"host": "h", "short_message": "gz", "level": "4"})))
        c.udp(zlib.compress(orjson.dumps({"host": "h", "short_message": "zl", "level": 9, "timestamp": "x"})))
        recs = c.wait(2)
    gz = next(r for r in recs if r["message"] == "gz")
    zl = next(r for r in recs if r["message"] == "zl")
    assert gz["log"]["syslog"]["severity"]["code"] == 4
    assert zl["gelf"]["level"] == 9 and "log" not in zl  # not a syslog level: kept as it came
    assert abs(time.time() - time.mktime(time.strptime(zl["@timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))) < 86400 + 60
    assert os.path.exists(tmp_path / "out.ndjson")
