"""The ``fluent_forward`` source with real clients over real sockets (nothing mocked).

Clients: a hand-written one (every mode, the chunk/ack flow, the shared-key handshake, TLS,
garbage), the ``fluent-logger`` package, and hypothesis for hostile input.  The Docker
``fluentd`` log driver itself is in tests/e2e/test_forward_docker.py.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgpack import ExtType
from pydantic import ValidationError

from collector.codecs.forward import digest, event_time, pack_entries, pack_message, ping
from collector.deadletter import DeadLetter
from collector.sources.fluent_forward import FluentForwardConfig
from collector.sources.fluent_forward.intake import Intake
from collector.sources.fluent_forward.records import Decoder
from collector.telemetry import Telemetry
from tests.helpers import (
    REPO,
    BackgroundPipeline,
    Collector,
    free_port,
    metric,
    read_ndjson,
    run_cli,
    run_once,
    unread_bytes,
    wait_until,
)

T0 = 1714564800  # 2024-05-01T12:00:00Z
CID = "c0ffee" * 10 + "abcd"


# -- helpers -------------------------------------------------------------------------------------
def docker_rec(log: str, source: str = "stdout", cid: str = CID, name: str = "/web", **extra: Any) -> dict[str, Any]:
    """A record exactly as Docker's fluentd driver builds it."""
    return {"container_id": cid, "container_name": name, "source": source, "log": log, **extra}


def part(log: str, pid: str, ordinal: int, last: bool, source: str = "stdout", cid: str = CID) -> dict[str, Any]:
    return docker_rec(
        log,
        source,
        cid,
        partial_message="true",
        partial_id=pid,
        partial_ordinal=str(ordinal),
        partial_last="true" if last else "false",
    )


def message(tag: str, t: Any, record: dict[str, Any], option: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb([tag, t, record] + ([option] if option is not None else []), use_bin_type=True)


class Client:
    """A forward-protocol client on a blocking socket."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 10) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(s, server_hostname="localhost") if tls is not None else s
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(StopIteration):
                return next(self.unpacker)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.unpacker.feed(data)

    def closed_by_server(self, timeout: float = 10) -> bool:
        """True when the server ends the connection within ``timeout`` (whatever it sent first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                return True
            except TimeoutError:
                return False
        return False

    def handshake(self, key: str, hostname: str = "client-host", user: str = "", password: str = "") -> list[Any]:
        helo = self.recv()
        assert helo[0] == "HELO"
        nonce, auth = helo[1]["nonce"], helo[1]["auth"]
        salt = os.urandom(16)
        self.send(ping(nonce, key, hostname, salt, user, password, auth))
        pong = self.recv()
        assert pong[0] == "PONG"
        if pong[1]:  # the server proves it knows the key too
            assert pong[4] == digest(salt, pong[3], nonce, key)
        return pong

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Running:
    def __init__(self, bg: BackgroundPipeline, out: Path) -> None:
        self.bg = bg
        self.out = out
        self.source = bg.pipeline.sources["fwd"]
        wait_until(lambda: self.source.address is not None, 10, what="the source to listen")
        self.port = self.source.address[1] if isinstance(self.source.address, tuple) else 0

    def records(self) -> list[dict[str, Any]]:
        return read_ndjson(self.out)

    def wait_records(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.records()) >= n, timeout, what=f"{n} records")
        return self.records()

    def errors(self, reason: str | None = None) -> float:
        labels = {"component": "fwd"} | ({"reason": reason} if reason else {})
        return self.bg.telemetry.value("collector_errors_total", **labels)


def pipeline_config(
    tmp_path: Path, out: Path, source: dict[str, Any] | None = None, fsync: str = "always", **sink: Any
) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"], **(source or {})}},
        "sinks": {"out": {"type": "file", "inputs": ["fwd"], "path": str(out), "fsync": fsync, **sink}},
    }


@contextlib.contextmanager
def forward_pipeline(tmp_path: Path, **source: Any) -> Iterator[Running]:
    out = tmp_path / "out.ndjson"
    with BackgroundPipeline(pipeline_config(tmp_path, out, source)) as bg:
        yield Running(bg, out)
        assert bg.stop() == 0


def by(records: list[dict[str, Any]], key: str = "message") -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in records}


# -- records -------------------------------------------------------------------------------------
def test_every_mode_lands_as_the_same_ecs_records(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(message("docker.web", event_time(T0, 123456789), docker_rec("from docker")))
        c.send(message("docker.web", T0, docker_rec("with labels", "stderr", team="core", host="h1")))
        c.send(message("app", T0 + 0.5, {"message": "generic", "level": "info", "tags": ["x"], "_meta": 1}))
        c.send(message("app", T0, {"log": "log key", "stream": "stdout", "nested": {"a": [1, 2]}}))
        c.send(pack_message("fw", [[T0, {"message": "forward 1"}], [event_time(T0, 1), {"message": "forward 2"}]]))
        c.send(pack_message("pk", pack_entries([(T0, {"message": "packed"})])))
        c.send(pack_message("gz", gzip.compress(pack_entries([(T0, {"message": "gzip"})])), {"compressed": "gzip"}))
        recs = by(run.wait_records(8))
    host = socket.gethostname()
    assert recs["from docker"] == {
        "@timestamp": "2024-05-01T12:00:00.123456789Z",
        "message": "from docker",
        "stream": "stdout",
        "host": {"name": host},  # a client on this host: this host
        "observer": {"hostname": host},  # the collector that received it
        "tags": ["docker.web"],
        "container": {"id": CID, "name": "web"},  # Docker's leading slash removed
    }
    labelled = recs["with labels"]
    assert labelled["stream"] == "stderr"
    assert labelled["team"] == "core"  # the driver's labels/env extras, top level
    assert labelled["host"] == {"name": "h1"}  # a record that names its host
    assert labelled["observer"] == {"hostname": host}
    assert labelled["container"] == {"id": CID, "name": "web"}
    assert recs["generic"] == {
        "@timestamp": "2024-05-01T12:00:00.500000000Z",
        "message": "generic",
        "log": {"level": "info", "syslog": {"severity": {"code": 6, "name": "info"}}},
        "meta": 1,
        "fluent": {"tags": ["x"]},  # names we own, set aside
        "host": {"name": host},
        "observer": {"hostname": host},
        "tags": ["app"],
    }
    assert recs["log key"]["stream"] == "stdout"
    assert recs["log key"]["nested"] == {"a": [1, 2]}
    assert "container" not in recs["log key"]
    assert recs["forward 2"]["@timestamp"] == "2024-05-01T12:00:00.000000001Z"
    assert recs["packed"]["tags"] == ["pk"]
    assert recs["gzip"]["tags"] == ["gz"]


def test_static_tags_follow_the_forward_tag(tmp_path):
    with forward_pipeline(tmp_path, tags=["site-a", "prod"]) as run, Client(run.port) as c:
        c.send(message("log-test-container-A", T0, {"message": "m"}))
        (rec,) = run.wait_records(1)
    assert rec["tags"] == ["log-test-container-A", "site-a", "prod"]


# -- acks ----------------------------------------------------------------------------------------
def test_ack_arrives_once_the_records_are_in_the_file(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        cases = [
            ("c-msg", message("t", T0, {"message": "msg"}, {"chunk": "c-msg"}), ["msg"]),
            ("c-fw", pack_message("t", [[T0, {"message": f"fw{i}"}] for i in range(3)], {"chunk": "c-fw"}), None),
            ("c-pk", pack_message("t", pack_entries([(T0, {"message": "pk"})]), {"chunk": "c-pk", "size": 1}), None),
            (
                "c-gz",
                pack_message(
                    "t",
                    gzip.compress(pack_entries([(T0, {"message": f"gz{i}"}) for i in range(5000)])),
                    {"chunk": "c-gz", "compressed": "gzip", "size": 5000},
                ),
                None,
            ),
        ]
        expected = 0
        for chunk, wire, _ in cases:
            c.send(wire)
            assert c.recv() == {"ack": chunk}
            # the ack means "safe": the records are already written (and fsynced) by the sink
            expected += {"c-msg": 1, "c-fw": 3, "c-pk": 1, "c-gz": 5000}[chunk]
            assert len(run.records()) == expected
    msgs = [r["message"] for r in read_ndjson(run.out)]
    assert msgs[:5] == ["msg", "fw0", "fw1", "fw2", "pk"]
    assert msgs[5:] == [f"gz{i}" for i in range(5000)]


def test_no_ack_while_the_sink_cannot_write(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read (yet)
    got = bytearray()
    stop = threading.Event()
    try:
        cfg = pipeline_config(tmp_path, fifo, fsync="never")
        with BackgroundPipeline(cfg) as bg:
            run = Running(bg, fifo)
            big = "y" * 300_000  # larger than the pipe: the sink's write blocks
            with Client(run.port) as c:
                c.send(message("t", T0, {"message": big}, {"chunk": "blocked"}))
                with pytest.raises(TimeoutError):
                    c.recv(timeout=1.5)  # written only partly: no ack
                reader = threading.Thread(target=_drain_fd, args=(rfd, got, stop), daemon=True)
                reader.start()
                assert c.recv(timeout=10) == {"ack": "blocked"}
            stop.set()
            reader.join(10)
            assert bg.stop() == 0
    finally:
        os.close(rfd)
    (rec,) = [orjson.loads(line) for line in bytes(got).splitlines()]
    assert rec["message"] == big


def test_stopping_still_acks_what_was_in_flight(tmp_path):
    """On SIGTERM the source stops reading, the pipeline drains, and the ack of a record that was
    stuck in a blocked sink is still sent before the connection closes."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = bytearray()
    stop = threading.Event()
    reader = threading.Thread(target=_drain_fd, args=(rfd, got, stop), daemon=True)
    try:
        with BackgroundPipeline(pipeline_config(tmp_path, fifo, fsync="never")) as bg:
            run = Running(bg, fifo)
            with Client(run.port) as c:
                c.send(message("t", T0, {"message": "z" * 300_000}, {"chunk": "in-flight"}))
                c.send(message("t", T0, part("half a line", "P", 1, False)))
                wait_until(
                    lambda: bg.telemetry.value("collector_events_received_total") >= 1 and unread_bytes(run.port) == 0,
                    what="both messages read by the collector",
                )
                stopper = threading.Thread(target=bg.stop)
                stopper.start()  # request_stop: no more reading; draining
                wait_until(lambda: bg.pipeline.stop_requested, what="the stop requested")
                reader.start()  # the sink can write again
                assert c.recv(timeout=10) == {"ack": "in-flight"}
                assert c.closed_by_server()
                stopper.join(30)
            assert bg.rc == 0
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        os.close(rfd)
    recs = [orjson.loads(line) for line in bytes(got).splitlines()]
    assert [len(r["message"]) for r in recs] == [300_000, len("half a line")]
    assert recs[1]["log"]["flags"] == ["incomplete"]  # the split line whose end never came


def _drain_fd(fd: int, into: bytearray, stop: threading.Event, once: bool = False) -> None:
    deadline = time.monotonic() + 5
    while not once or time.monotonic() < deadline:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            if stop.is_set():
                return
            time.sleep(0.01)
            continue
        if data:
            into.extend(data)
        elif stop.is_set():
            return
        else:
            time.sleep(0.01)


def test_split_line_parts_are_acked_as_they_arrive(tmp_path):
    """Docker's driver (like every fluent-logger) waits for a part's ack before sending the next
    part: each part is acknowledged once it is in the rejoin buffer, not when the line is whole."""
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(message("t", T0, part("aaa", "p1", 1, False), {"chunk": "part-1"}))
        assert c.recv(timeout=2) == {"ack": "part-1"}
        assert run.records() == []
        c.send(message("t", T0, part("bbb", "p1", 2, True), {"chunk": "part-2"}))
        assert c.recv(timeout=2) == {"ack": "part-2"}
        (rec,) = run.records()  # the ack of the last part waited for the whole line
    assert rec["message"] == "aaabbb"
    assert "log" not in rec


# -- streams and connections ------------------------------------------------------------------------
def test_a_stream_sent_one_byte_at_a_time(tmp_path):
    wire = b"".join(message("t", event_time(T0, i), {"message": f"byte-{i}"}) for i in range(20))
    wire += pack_message("t", pack_entries([(T0, {"message": f"packed-{i}"}) for i in range(20)]), {"chunk": "x"})
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(wire)):
            c.send(wire[i : i + 1])
            if i % 50 == 0:
                time.sleep(0.001)  # let the server see separate segments
        assert c.recv() == {"ack": "x"}
        recs = run.wait_records(40)
    assert [r["message"] for r in recs] == [f"byte-{i}" for i in range(20)] + [f"packed-{i}" for i in range(20)]


def test_many_connections_at_once(tmp_path):
    n_clients, per = 30, 300

    def send(k: int) -> None:
        with Client(run.port) as c:
            for i in range(0, per, 50):
                entries = [(event_time(T0, j), {"message": f"{k}-{j}"}) for j in range(i, i + 50)]
                c.send(pack_message(f"client.{k}", pack_entries(entries), {"chunk": f"{k}-{i}"}))
            for i in range(0, per, 50):
                assert c.recv()["ack"] == f"{k}-{i}"

    with forward_pipeline(tmp_path) as run:
        threads = [threading.Thread(target=send, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        recs = run.wait_records(n_clients * per)
    msgs = [r["message"] for r in recs]
    assert len(msgs) == len(set(msgs)) == n_clients * per
    for k in range(n_clients):  # each connection's order is kept
        mine = [m for m in msgs if m.startswith(f"{k}-")]
        assert mine == [f"{k}-{j}" for j in range(per)]


def test_max_connections(tmp_path):
    with forward_pipeline(tmp_path, max_connections=2) as run, Client(run.port) as a, Client(run.port) as b:
        a.send(message("t", T0, {"message": "a"}))
        b.send(message("t", T0, {"message": "b"}))
        run.wait_records(2)
        with Client(run.port) as third:
            assert third.closed_by_server(5)
        assert run.errors("too_many_connections") == 1
        a.send(message("t", T0, {"message": "a again"}))  # the others keep flowing
        assert "a again" in by(run.wait_records(3))


def test_udp_heartbeat_is_answered(tmp_path):
    with forward_pipeline(tmp_path) as run:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"\x00", ("127.0.0.1", run.port))
            data, addr = u.recvfrom(16)
        assert data == b"\x00"
        assert addr[1] == run.port


def test_unix_socket_listener(tmp_path):
    from fluent import sender

    path = tmp_path / "fwd.sock"
    with forward_pipeline(tmp_path, listen=[f"unix://{path}"]) as run:
        assert run.source.address == str(path)
        s = sender.FluentSender("unix", host=f"unix://{path}")
        assert s.emit("x", {"message": "over a unix socket"}), s.last_error
        s.close()
        (rec,) = run.wait_records(1)
    assert rec["tags"] == ["unix.x"]
    assert not path.exists()  # removed on stop


# -- fluent-logger (the Python client package) ---------------------------------------------------------
def test_fluent_logger_sender_handler_and_async_sender(tmp_path):
    import logging

    from fluent import asyncsender, handler, sender

    with forward_pipeline(tmp_path) as run:
        s = sender.FluentSender("app", port=run.port)
        assert s.emit("web", {"message": "seconds"}), s.last_error
        ns = sender.FluentSender("app", port=run.port, nanosecond_precision=True)
        assert ns.emit("web", {"message": "nanoseconds"}), ns.last_error
        assert ns.emit_with_time("web", T0 + 0.5, {"message": "float time"})
        s.close()
        ns.close()
        a = asyncsender.FluentSender("async", port=run.port)
        for i in range(100):
            a.emit("q", {"message": f"async {i}"})
        a.close()
        h = handler.FluentHandler("logging", port=run.port)
        h.setFormatter(handler.FluentRecordFormatter({"level": "%(levelname)s", "where": "%(module)s"}))
        lg = logging.getLogger("fluent-test")
        lg.addHandler(h)
        lg.warning({"message": "from logging", "user": 7})
        h.close()
        lg.removeHandler(h)
        recs = by(run.wait_records(104))
    assert recs["seconds"]["tags"] == ["app.web"]
    assert recs["seconds"]["@timestamp"].endswith(".000000000Z")
    assert not recs["nanoseconds"]["@timestamp"].endswith("000000Z")  # sub-second precision kept
    assert recs["float time"]["@timestamp"] == "2024-05-01T12:00:00.500000000Z"
    assert [recs[f"async {i}"]["tags"] for i in (0, 99)] == [["async.q"], ["async.q"]]
    logged = recs["from logging"]
    assert (logged["log"]["level"], logged["user"], logged["where"]) == ("warning", 7, "test_fluent_forward")
    assert logged["log"]["syslog"]["severity"]["code"] == 4  # Python's WARNING, in the one vocabulary
    assert logged["tags"] == ["logging"]


def test_fluent_logger_resends_what_it_buffered_while_the_collector_was_down(tmp_path):
    from fluent import sender

    port = free_port()
    overflowed: list[bytes] = []
    s = sender.FluentSender("buf", port=port, timeout=1)
    assert not s.emit("a", {"message": "while down"})  # refused: kept in its buffer
    small = sender.FluentSender("ovf", port=port, timeout=1, bufmax=10, buffer_overflow_handler=overflowed.append)
    assert not small.emit("b", {"message": "overflowed 1"})  # refused: buffered
    assert not small.emit("b", {"message": "overflowed 2"})  # refused, and now the buffer is too big
    assert len(overflowed) == 1, "the overflow handler was not called"
    small.close()
    with forward_pipeline(tmp_path, listen=[f"tcp://127.0.0.1:{port}"]) as run:
        assert s.emit("a", {"message": "after restart"}), s.last_error
        s.close()
        with Client(run.port) as c:  # what the handler got is a valid forward stream: replay it
            c.send(overflowed[0])
        recs = run.wait_records(4)
    assert [r["message"] for r in recs if r["tags"] == ["buf.a"]] == ["while down", "after restart"]
    assert [r["message"] for r in recs if r["tags"] == ["ovf.b"]] == ["overflowed 1", "overflowed 2"]


# -- security -----------------------------------------------------------------------------------
def test_shared_key_handshake(tmp_path):
    opts = {"shared_key": "s3cret", "self_hostname": "collector-host", "handshake_timeout": 1}
    with forward_pipeline(tmp_path, **opts) as run:
        with Client(run.port) as good:
            pong = good.handshake("s3cret")
            assert pong[:4] == ["PONG", True, "", "collector-host"]
            good.send(message("auth", T0, {"message": "authenticated"}, {"chunk": "k1"}))
            assert good.recv() == {"ack": "k1"}
        with Client(run.port) as bad:
            assert bad.handshake("wrong") == ["PONG", False, "shared_key mismatch", "", ""]
            assert bad.closed_by_server()
        with Client(run.port) as rude:  # data without the handshake
            assert rude.recv()[0] == "HELO"
            rude.send(message("auth", T0, {"message": "sneaky"}))
            assert rude.recv() == ["PONG", False, "invalid ping message", "", ""]
            assert rude.closed_by_server()
        with Client(run.port) as eager:  # PING and data in one write: the data is not left waiting
            helo = eager.recv()
            salt = os.urandom(16)
            eager.send(
                ping(helo[1]["nonce"], "s3cret", "eager", salt)
                + message("auth", T0, {"message": "right after PING"}, {"chunk": "k2"})
            )
            assert eager.recv()[:2] == ["PONG", True]
            assert eager.recv() == {"ack": "k2"}
        with Client(run.port) as silent:  # connects, never answers HELO: dropped in time
            assert silent.recv()[0] == "HELO"
            assert silent.closed_by_server(5)
        assert run.errors("handshake_timeout") == 1
        assert [r["message"] for r in run.records()] == ["authenticated", "right after PING"]
        assert run.errors("auth_failed") == 2


def test_shared_key_with_users(tmp_path):
    users = [{"username": "alice", "password": "pw-a"}, {"username": "bob", "password": "pw-b"}]
    with forward_pipeline(tmp_path, shared_key="k", users=users) as run:
        with Client(run.port) as c:
            assert c.handshake("k", user="bob", password="pw-b")[1] is True
            c.send(message("u", T0, {"message": "bob was here"}, {"chunk": "b"}))
            assert c.recv() == {"ack": "b"}
        for user, pw in (("alice", "pw-b"), ("mallory", "pw-a"), ("", "")):
            with Client(run.port) as c:
                assert c.handshake("k", user=user, password=pw) == ["PONG", False, "username/password mismatch", "", ""]
                assert c.closed_by_server()
        assert [r["message"] for r in run.records()] == ["bob was here"]


def test_the_shared_key_and_passwords_are_secret_strings_never_shown():
    """Issue 17: secrets are secret strings everywhere (the Elasticsearch sink's already were)."""
    users = [{"username": "alice", "password": "pw-alice"}]
    cfg = FluentForwardConfig(type="fluent_forward", shared_key="the-k3y", users=users)
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump(mode="json"))):
        assert "the-k3y" not in shown and "pw-alice" not in shown
    assert cfg.shared_key is not None and cfg.shared_key.get_secret_value() == "the-k3y"
    assert cfg.users[0].password.get_secret_value() == "pw-alice"


def test_users_need_a_shared_key():
    with pytest.raises(ValueError, match="users need shared_key"):
        FluentForwardConfig(type="fluent_forward", users=[{"username": "a", "password": "b"}])


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_with_and_without_a_shared_key(tmp_path, certificate):
    cert, key = certificate
    tls = ssl.create_default_context(cafile=str(cert))
    opts = {"tls": {"cert_file": str(cert), "key_file": str(key)}, "listen": ["tls://127.0.0.1:0"]}
    with forward_pipeline(tmp_path, **opts) as run:
        with Client(run.port, tls=tls) as c:
            c.send(message("tls", T0, {"message": "encrypted"}, {"chunk": "t1"}))
            assert c.recv() == {"ack": "t1"}
        with Client(run.port) as plain:  # no TLS: nothing gets through
            plain.send(message("tls", T0, {"message": "in clear"}))
            assert plain.closed_by_server()
        wait_until(lambda: run.errors("tls_failed") == 1, 5)
        with pytest.raises(ssl.SSLCertVerificationError), Client(run.port, tls=ssl.create_default_context()):
            pass  # a client that does not trust our certificate refuses us
        wait_until(lambda: run.errors("tls_failed") == 2, 5)
        assert [r["message"] for r in run.records()] == ["encrypted"]
    with forward_pipeline(tmp_path / "2", shared_key="k", **opts) as run, Client(run.port, tls=tls) as c:
        assert c.handshake("k")[1] is True
        c.send(message("tls", T0, {"message": "both"}, {"chunk": "t2"}))
        assert c.recv() == {"ack": "t2"}
    mutual = {
        "tls": {"cert_file": str(cert), "key_file": str(key), "client_ca_file": str(cert)},
        "listen": ["tls://127.0.0.1:0"],
    }
    with forward_pipeline(tmp_path / "3", **mutual) as run:
        with_cert = ssl.create_default_context(cafile=str(cert))
        with_cert.load_cert_chain(str(cert), str(key))  # self-signed: its own CA
        with Client(run.port, tls=with_cert) as c:
            c.send(message("tls", T0, {"message": "mutual"}, {"chunk": "t3"}))
            assert c.recv() == {"ack": "t3"}
        with Client(run.port, tls=tls) as anonymous:  # no client certificate: refused
            with contextlib.suppress(OSError):
                anonymous.send(message("tls", T0, {"message": "anonymous"}))
            assert anonymous.closed_by_server()
        assert [r["message"] for r in run.records()] == ["mutual"]
        wait_until(lambda: run.errors("tls_failed") == 1, 5)


def test_one_source_serves_every_listen_url(tmp_path, certificate):
    """tcp://, tls:// and unix:// at once; each TCP port (tls:// too) answers UDP heartbeats."""
    from fluent import sender

    cert, key = certificate
    path = tmp_path / "fwd.sock"
    listen = ["tcp://127.0.0.1:0", "tls://127.0.0.1:0", f"unix://{path}"]
    tls_opts = {"cert_file": str(cert), "key_file": str(key)}
    with forward_pipeline(tmp_path, listen=listen, tls=tls_opts) as run:
        wait_until(lambda: len(run.source.addresses) == 3, 10, what="three listeners")
        (_, plain), (_, secure), unix = run.source.addresses
        assert unix == str(path)
        assert run.source.bound == [f"tcp://127.0.0.1:{plain}", f"tls://127.0.0.1:{secure}", f"unix://{path}"]
        with Client(plain) as c:
            c.send(message("m", T0, {"message": "tcp"}, {"chunk": "c1"}))
            assert c.recv() == {"ack": "c1"}
        with Client(secure, tls=ssl.create_default_context(cafile=str(cert))) as c:
            c.send(message("m", T0, {"message": "tls"}, {"chunk": "c2"}))
            assert c.recv() == {"ack": "c2"}
        with Client(secure) as clear:  # the tls:// port speaks only TLS
            clear.send(message("m", T0, {"message": "in clear"}))
            assert clear.closed_by_server()
        s = sender.FluentSender("m", host=f"unix://{path}")
        assert s.emit("x", {"message": "unix"}), s.last_error
        s.close()
        for port in (plain, secure):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                u.sendto(b"\x00", ("127.0.0.1", port))
                assert u.recvfrom(16) == (b"\x00", ("127.0.0.1", port))
        assert sorted(r["message"] for r in run.wait_records(3)) == ["tcp", "tls", "unix"]


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ({"listen": ["tls://127.0.0.1:0"]}, "a tls:// listener needs `tls"),
        ({"listen": ["tcp://127.0.0.1:0"], "tls": {"cert_file": "c", "key_file": "k"}}, "no listener is tls://"),
        ({"listen": ["udp://127.0.0.1:0"]}, "listen on tcp://HOST:PORT, tls://HOST:PORT or unix:///PATH"),
        ({"listen": ["127.0.0.1:24224"]}, "listen on tcp://"),
        ({"listen": []}, "at least 1"),
    ],
)
def test_listen_urls_are_checked(source, error):
    with pytest.raises(ValidationError, match=re.escape(error)):
        FluentForwardConfig(type="fluent_forward", **source)


# -- bad input ----------------------------------------------------------------------------------
GARBAGE = {
    "not msgpack": b"\xc1\xc1\xc1 hello",
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "not an array": msgpack.packb({"tag": "t"}),
    "tag not a string": msgpack.packb([42, T0, {"message": "x"}]),
    "too many items": msgpack.packb(["t", [], {}, {}]),
    "option not a map": msgpack.packb(["t", [], "nope"]),
    "deep nesting": b"\x91" * 5000 + b"\xc0",
    "huge map header": b"\xdf\xff\xff\xff\xff",
    "huge string header": b"\xdb\x7f\xff\xff\xff",
    "bad EventTime": msgpack.packb(["t", msgpack.ExtType(0, b"123"), {}]),
    "bad gzip": pack_message("t", b"not gzip at all", {"compressed": "gzip"}),
    "unknown compression": pack_message("t", b"x", {"compressed": "zstd"}),
    "unhashable map key": b"\x93\xa1t\x01\x81\x91\x01\x01",
    "chunk not a string": pack_message("t", [], {"chunk": 42}),
    "truncated": msgpack.packb(["t", T0, {"message": "x" * 100}])[:-20],
}


def test_garbage_closes_that_connection_only(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as good:
        good.send(message("good", T0, {"message": "before"}))
        run.wait_records(1)
        for name, payload in GARBAGE.items():
            with Client(run.port) as bad:
                bad.send(payload)
                if name in ("truncated", "huge string header", "huge map header"):  # they wait for the rest: hang up
                    bad.sock.shutdown(socket.SHUT_WR)
                assert bad.closed_by_server(5), name
            good.send(message("good", T0, {"message": f"after {name}"}, {"chunk": name}))
            assert good.recv() == {"ack": name}
        assert len(run.records()) == len(GARBAGE) + 1
        assert run.errors() >= len(GARBAGE)
        letters = read_ndjson(tmp_path / "state" / "dead-letter" / "fwd.ndjson")
    assert len(letters) == len(GARBAGE)
    assert all(e["origin"]["peer"].startswith("127.0.0.1:") for e in letters)
    assert letters[0]["reason"].startswith("not msgpack")
    assert letters[0]["raw_base64"]  # the raw bytes, kept exactly
    reasons = {e["reason"].split(":")[0] for e in letters}
    assert {"not a forward message", "bad tag", "too deeply nested", "bad gzip"} <= reasons
    assert {"bad EventTime", "bad option", "bad map key", "truncated message"} <= reasons


def test_bad_entries_are_set_aside_and_the_rest_is_accepted(tmp_path):
    entries = [
        [T0, {"message": "ok 1"}],
        ["yesterday", {"message": "bad time"}],
        [T0, "not a map"],
        [T0],
        [T0, {"message": "ok 2"}],
    ]
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(pack_message("t", entries, {"chunk": "mixed", "size": 5}))
        assert c.recv() == {"ack": "mixed"}  # the bad ones are finalized by dead-lettering them
        c.send(message("t", T0, {"message": "still connected"}))
        recs = run.wait_records(3)
        assert run.errors("bad time") == 1 and run.errors("bad record") == 1 and run.errors("bad entry") == 1
    assert [r["message"] for r in recs] == ["ok 1", "ok 2", "still connected"]
    (letter,) = read_ndjson(tmp_path / "state" / "dead-letter" / "fwd.ndjson")
    assert letter["reason"] == "bad time: bad entries set aside; the other entries of their message were delivered"
    assert (letter["origin"]["entries"], letter["origin"]["of"]) == (3, 5)
    assert letter["origin"]["tag"] == "t"
    bad = msgpack.unpackb(__import__("base64").b64decode(letter["raw_base64"]), raw=False)
    assert bad == [["yesterday", {"message": "bad time"}], [T0, "not a map"], [T0]]


def ext(code: int, data: bytes) -> bytes:
    """A msgpack ext object, byte for byte (msgpack.ExtType cannot make type -1)."""
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}.get(len(data))
    head = fixed if fixed else b"\xc7" + bytes([len(data)])
    return head + code.to_bytes(1, "big", signed=True) + data


def forward_raw(tag: str, raw_entries: list[bytes], option: dict[str, Any]) -> bytes:
    """``[tag, [entries...], option]`` with each entry given as its msgpack bytes."""
    return (
        b"\x93"
        + msgpack.packb(tag)
        + b"\xdd"
        + len(raw_entries).to_bytes(4, "big")
        + b"".join(raw_entries)
        + (msgpack.packb(option))
    )


def entry_raw(time_bytes: bytes, record: dict[str, Any]) -> bytes:
    return b"\x92" + time_bytes + msgpack.packb(record)


TS_96 = ext(-1, (123).to_bytes(4, "big") + T0.to_bytes(8, "big"))  # msgpack timestamp 96: ns + seconds
TS_32 = ext(-1, T0.to_bytes(4, "big"))
TS_HUGE = ext(-1, (0).to_bytes(4, "big") + (2**63 - 1).to_bytes(8, "big"))  # year 292 billion
BAD_EVENT_TIME = ext(0, b"123")  # 3 bytes instead of 8
BAD_NANOS = ext(0, T0.to_bytes(4, "big") + (2_000_000_000).to_bytes(4, "big"))


def test_every_time_encoding_and_one_bad_time_costs_only_its_entry(tmp_path, caplog):
    """Issue 13 row 9: one malformed EventTime, a msgpack timestamp with huge seconds."""
    entries = [
        entry_raw(msgpack.packb(T0), {"message": "int"}),
        entry_raw(msgpack.packb(T0 + 0.25), {"message": "float"}),
        entry_raw(ext(0, T0.to_bytes(4, "big") + (5).to_bytes(4, "big")), {"message": "EventTime"}),
        entry_raw(TS_96, {"message": "timestamp 96"}),
        entry_raw(TS_32, {"message": "timestamp 32"}),
        entry_raw(TS_HUGE, {"message": "huge seconds"}),
        entry_raw(BAD_EVENT_TIME, {"message": "3-byte EventTime"}),
        entry_raw(BAD_NANOS, {"message": "2e9 nanoseconds"}),
        entry_raw(msgpack.packb(T0), {"message": "last"}),
    ]
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(forward_raw("t", entries, {"chunk": "times", "size": len(entries)}))
        assert c.recv() == {"ack": "times"}  # the good ones delivered, the bad set aside: acknowledged
        c.send(message("t", T0, {"message": "still connected"}, {"chunk": "after"}))
        assert c.recv() == {"ack": "after"}
        recs = by(run.wait_records(6))
        assert run.errors("bad time") == 1 and run.errors("bad EventTime") == 2
    assert {k: v["@timestamp"] for k, v in recs.items()} == {
        "int": "2024-05-01T12:00:00.000000000Z",
        "float": "2024-05-01T12:00:00.250000000Z",
        "EventTime": "2024-05-01T12:00:00.000000005Z",
        "timestamp 96": "2024-05-01T12:00:00.000000123Z",
        "timestamp 32": "2024-05-01T12:00:00.000000000Z",
        "last": "2024-05-01T12:00:00.000000000Z",
        "still connected": "2024-05-01T12:00:00.000000000Z",
    }
    (letter,) = read_ndjson(tmp_path / "state" / "dead-letter" / "fwd.ndjson")
    assert (letter["origin"]["entries"], letter["origin"]["of"]) == (3, 9)
    assert not [r for r in caplog.records if r.exc_info], "no traceback for bad input"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_malformed_timestamp_in_a_packed_stream_costs_only_its_entry(tmp_path):
    """msgpack itself refuses a timestamp with 2e9 nanoseconds: the stream goes on after it."""
    bad96 = ext(-1, (2_000_000_000).to_bytes(4, "big") + T0.to_bytes(8, "big"))
    packed = b"".join(
        [
            entry_raw(msgpack.packb(T0), {"message": "before"}),
            entry_raw(bad96, {"message": "bad nanoseconds"}),
            entry_raw(ext(-1, b"abc"), {"message": "bad length"}),
            entry_raw(msgpack.packb(T0), {"message": "after"}),
        ]
    )
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(pack_message("t", packed, {"chunk": "pk"}))
        assert c.recv() == {"ack": "pk"}
        c.send(pack_message("t", gzip.compress(packed), {"chunk": "gz", "compressed": "gzip"}))
        assert c.recv() == {"ack": "gz"}
        recs = run.wait_records(4)
        assert run.errors("bad time") == 4
    assert [r["message"] for r in recs] == ["before", "after", "before", "after"]


def test_a_message_none_of_whose_entries_can_be_read_is_never_acknowledged(tmp_path, caplog):
    """Issue 15: the collector acked chunks whose every entry it had dead-lettered, so the client
    counted them as delivered. Now: no ack, the connection is closed, an ERROR says why."""
    unreadable = [["yesterday", {"message": f"m{i}"}] for i in range(3)]
    with forward_pipeline(tmp_path) as run:
        with Client(run.port) as c:
            c.send(message("t", T0, {"message": "good before"}, {"chunk": "good"}))
            c.send(pack_message("t", unreadable, {"chunk": "bad-chunk", "size": 3}))
            assert c.recv() == {"ack": "good"}  # what came before is delivered and acknowledged
            with pytest.raises(EOFError):
                c.recv(timeout=10)  # then the connection ends: no ack for the unreadable chunk
        with Client(run.port) as c:  # no chunk either: refused all the same
            c.send(pack_message("t", pack_entries([("yesterday", {"message": "x"})])))
            assert c.closed_by_server(10)
        with Client(run.port) as c:  # other clients are not affected
            c.send(message("t", T0, {"message": "other client"}, {"chunk": "other"}))
            assert c.recv() == {"ack": "other"}
        recs = run.wait_records(2)
        assert run.errors("unreadable_message") == 2
    assert [r["message"] for r in recs] == ["good before", "other client"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # one line per reason per minute, the rest counted
    assert "127.0.0.1:" in errors[0] and "forward message" in errors[0] and "bad-chunk" in errors[0]
    assert "[str 'yesterday', map]" in errors[0]  # the shape of what it could not read
    letters = read_ndjson(tmp_path / "state" / "dead-letter" / "fwd.ndjson")
    assert [x["reason"] for x in letters] == [
        "bad time: no entry of the message could be read; not acknowledged, connection closed"
    ] * 2


def test_the_dead_letter_warning_is_true_and_said_once(tmp_path, caplog):
    """It said "(the rest of the message was accepted)" when nothing was, once per batch size."""
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        for n in (1, 2, 3):
            entries = [[T0, {"message": f"ok {n}"}]] + [["bad", {"message": "x"}]] * n
            c.send(pack_message("t", entries, {"chunk": f"c{n}"}))
            assert c.recv() == {"ack": f"c{n}"}
        run.wait_records(3)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "set aside" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "the other entries of their message were delivered" in warnings[0]
    assert "rest of the message was accepted" not in warnings[0]


def test_records_elasticsearch_rejects_are_acked_and_counted_by_the_source(es8, es_target, tmp_path, caplog):
    """Issue 16: how a chunk's records ended reaches the forward source. A record the engine
    rejects (a mapping conflict) is dead-lettered, i.e. kept: its chunk is still acknowledged (a
    resend would only be rejected again), counted as ``rejected`` and said in one line."""
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"]}},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["fwd"],
                "hosts": [es8.url],
                "data_stream": es_target,
                "batch": {"timeout": 0.2},
            }
        },
    }
    with BackgroundPipeline(cfg) as bg:
        run = Running(bg, tmp_path / "unused")

        def acks(status: str) -> float:
            return bg.telemetry.value("collector_acks_total", component="fwd", status=status)

        with Client(run.port) as c:
            c.send(message("t", T0, {"message": "first", "n": 1}, {"chunk": "ok"}))
            assert c.recv(timeout=60) == {"ack": "ok"}
            assert (acks("delivered"), acks("rejected")) == (1, 0)
            entries = [[T0, {"message": "second", "n": 2}], [T0, {"message": "bad", "n": {"not": "a number"}}]]
            c.send(pack_message("t", entries, {"chunk": "mixed", "size": 2}))
            assert c.recv(timeout=60) == {"ack": "mixed"}
            assert (acks("delivered"), acks("rejected"), acks("failed")) == (1, 1, 0)
        assert bg.stop() == 0
    assert sorted(d["message"] for d in es8.search(es_target)) == ["first", "second"]
    (dl,) = read_ndjson(tmp_path / "state" / "dead-letter" / "es.ndjson")
    assert dl["record"]["message"] == "bad"
    said = [r.getMessage() for r in caplog.records if "acknowledged with" in r.getMessage()]
    assert len(said) == 1 and "chunk mixed" in said[0] and "1 record(s) rejected downstream" in said[0], said


def test_size_mismatch_is_counted_not_refused(tmp_path):
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(pack_message("t", [[T0, {"message": "one"}]], {"size": 3, "chunk": "s"}))
        assert c.recv() == {"ack": "s"}
        assert run.errors("size_mismatch") == 1
        assert len(run.records()) == 1


def test_limits_message_size_gzip_bomb_and_record_size(tmp_path):
    opts = {"max_message_bytes": 1 << 16, "max_decompressed_bytes": 1 << 17, "max_record_bytes": 2048}
    with forward_pipeline(tmp_path, **opts) as run:
        with Client(run.port) as c:
            c.send(message("t", T0, {"message": "x" * 70_000}))
            assert c.closed_by_server()
        with Client(run.port) as c:
            bomb = gzip.compress(pack_entries([(T0, {"message": "z" * 1000})] * 200))
            assert len(bomb) < 1 << 16
            c.send(pack_message("t", bomb, {"compressed": "gzip"}))
            assert c.closed_by_server()
        with Client(run.port) as c:
            c.send(message("t", T0, {"message": "\u00e9" * 5000}, {"chunk": "long"}))
            assert c.recv() == {"ack": "long"}
        (rec,) = run.records()
        assert run.errors("message too large") == 1
        assert run.errors("decompressed too large") == 1
    assert rec["message"] == "\u00e9" * 1024  # 2048 bytes of UTF-8, cut on a character boundary
    assert rec["log"]["flags"] == ["truncated"]


def test_invalid_utf8_from_a_client_is_replaced_not_fatal(tmp_path):
    wire = b"\x93\xa1t\x01\x84\xaccontainer_id\xa4abcd\xaecontainer_name\xa2/x\xa6source\xa6stdout\xa3log\xa4a\xff\xfeb"
    wire += b"\x94\xa1t\x01\x81\xa7message\xa3\xc3(\x80\x81\xa5chunk\xa2c1"
    with forward_pipeline(tmp_path) as run, Client(run.port) as c:
        c.send(wire)
        assert c.recv() == {"ack": "c1"}
        recs = run.wait_records(2)
    assert [r["message"] for r in recs] == ["a\ufffd\ufffdb", "\ufffd(\ufffd"]


def test_hostile_input_while_a_good_client_keeps_flowing(tmp_path):
    """Random bytes, truncated and deformed messages, deep nesting, huge headers and wrong types:
    the server closes each bad connection, counts it, and a well-behaved client is not disturbed."""
    good_sent: list[int] = []
    stop = threading.Event()

    def good_client(port: int) -> None:
        with Client(port) as c:
            i = 0
            while not stop.is_set():
                c.send(message("good", T0, {"message": "good", "seq": i}, {"chunk": f"g{i}"}))
                assert c.recv(timeout=20) == {"ack": f"g{i}"}
                good_sent.append(i)
                i += 1
                time.sleep(0.002)

    valid = msgpack.packb(["t", event_time(T0, 1), {"message": "hostile but valid"}, {"chunk": "h"}])
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    )
    trees = st.recursive(
        leaves,
        lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=4), ch, max_size=4),
        max_leaves=25,
    )
    shaped = st.tuples(
        st.one_of(st.text(max_size=10), trees),
        st.one_of(st.integers(-5, 2**33), st.floats(), trees, st.lists(st.lists(trees, max_size=3), max_size=3)),
        st.one_of(trees, st.dictionaries(st.text(max_size=6), trees, max_size=5)),
        st.one_of(st.none(), st.dictionaries(st.sampled_from(["chunk", "size", "compressed"]), trees, max_size=3)),
    ).map(lambda t: msgpack.packb(list(t), use_bin_type=True))
    payloads = st.one_of(
        st.binary(max_size=4096),
        trees.map(lambda t: msgpack.packb(t, use_bin_type=True)),
        shaped,
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.integers(1, 4000).map(lambda n: b"\x91" * n + b"\xc0"),
        st.sampled_from(
            [b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x00"]
        ),
        st.binary(max_size=200).map(lambda b: pack_message("t", b, {"compressed": "gzip"})),
        st.binary(max_size=200).map(lambda b: pack_message("t", b)),
    )
    connections = [0]

    with forward_pipeline(tmp_path) as run:
        worker = threading.Thread(target=good_client, args=(run.port,), daemon=True)
        worker.start()

        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(payloads)
        def attack(payload: bytes) -> None:
            connections[0] += 1
            with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
                with contextlib.suppress(OSError):
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                while True:  # the server ends every connection: garbage now, the rest at our EOF
                    try:
                        if not s.recv(65536):
                            break
                    except ConnectionResetError:
                        break

        attack()
        stop.set()
        worker.join(30)
        assert not worker.is_alive()
        source_task = next(t for t in _tasks(run.bg) if t.get_name() == "source:fwd")
        assert not source_task.done()
        assert run.bg.pipeline.fatal is None
        assert run.errors() > 0
        with Client(run.port) as after:
            after.send(message("good", T0, {"message": "after the attack", "seq": -1}, {"chunk": "z"}))
            assert after.recv() == {"ack": "z"}
        goods = [r for r in run.records() if r.get("tags") == ["good"]]
    assert connections[0] >= 100
    assert len(good_sent) > 10
    assert sorted(r["seq"] for r in goods) == [-1, *good_sent]


def _tasks(bg: BackgroundPipeline) -> set[Any]:
    import asyncio

    return asyncio.all_tasks(bg.loop)


# -- backpressure --------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_blocked_sink_blocks_the_client_and_memory_stays_bounded(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    port = free_port()
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        f"""
data_dir: {tmp_path / "state"}
sources:
  fwd: {{type: fluent_forward, listen: ["tcp://127.0.0.1:{port}"]}}
sinks:
  out:
    type: file
    inputs: [fwd]
    path: {fifo}
    fsync: never
    buffer: {{max_events: 500, when_full: block}}
"""
    )
    n_msg, per = 1500, 100  # 150,000 records of ~1 KB: ~160 MB offered
    payload = "p" * 1000
    data = b"".join(
        pack_message("bp", pack_entries([(T0, {"seq": m * per + j, "message": payload}) for j in range(per)]))
        for m in range(n_msg)
    )
    got = bytearray()
    stop = threading.Event()
    reader = None
    with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log") as col:
        try:
            wait_until(lambda: _can_connect(port), 30, what="the collector to listen")
            base = _rss_mb(col.proc.pid)
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            sent, blocked_since = 0, None
            while sent < len(data):
                try:
                    sent += s.send(data[sent : sent + (1 << 20)])
                    blocked_since = None
                except BlockingIOError:
                    now = time.monotonic()
                    blocked_since = blocked_since or now
                    if now - blocked_since > 3:
                        break
                    time.sleep(0.02)
            # the sink cannot write, so the collector stopped reading, so the client is blocked
            assert sent < len(data) // 3, f"the client sent {sent} of {len(data)} bytes"
            held = _rss_mb(col.proc.pid)
            assert held - base < 120, f"RSS grew from {base:.0f} to {held:.0f} MB"
            reader = threading.Thread(target=_drain_fd, args=(rfd, got, stop), daemon=True)
            reader.start()
            s.setblocking(True)
            s.sendall(data[sent:])
            s.close()
            wait_until(lambda: bytes(got).count(b"\n") >= n_msg * per, 120, what="every record")
            peak = _rss_mb(col.proc.pid)
            assert col.stop() == 0, col.stderr()
        finally:
            stop.set()
            if reader is not None:
                reader.join(30)
            os.close(rfd)
    seqs = [orjson.loads(line)["seq"] for line in bytes(got).splitlines()]
    assert seqs == list(range(n_msg * per))  # every record once, in order
    assert peak - base < 200


def test_a_second_signal_stops_at_once_even_with_a_blocked_sink(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never read: the sink is stuck
    port, api = free_port(), f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        f"""
data_dir: {tmp_path / "state"}
api: {{listen: "tcp://{api}"}}
sources: {{fwd: {{type: fluent_forward, listen: ["tcp://127.0.0.1:{port}"]}}}}
sinks: {{out: {{type: file, inputs: [fwd], path: {fifo}, fsync: never, buffer: {{max_events: 10}}}}}}
"""
    )
    try:
        with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log") as col:
            wait_until(lambda: _can_connect(port), 30, what="the collector to listen")
            with Client(port) as c:
                for i in range(20):  # (backpressure: what the blocked pipeline holds, and the kernel, no more)
                    c.send(message("t", T0, {"message": f"{i}" + "q" * 100_000}, {"chunk": str(i)}))
                wait_until(
                    lambda: (metric(api, "collector_events_received_total", component="fwd") or 0) >= 10,
                    30,
                    what="records in flight in the blocked pipeline",
                )
                col.proc.send_signal(signal.SIGTERM)
                wait_until(lambda: "delivering what is in flight" in col.stderr(), 30, what="the drain to begin")
                col.proc.send_signal(signal.SIGTERM)  # the second signal: stop now
                wait_until(lambda: "pipeline ended" in col.stderr(), 10, what="the pipeline to end")
                acks = []
                with contextlib.suppress(EOFError, ConnectionResetError):
                    while True:
                        acks.append(c.recv(timeout=10))
                assert acks == []  # nothing was delivered, so nothing was acknowledged: the client resends
                # (the file sink's thread is still inside write(2) on the pipe: let it return)
                _drain_fd(rfd, bytearray(), threading.Event(), once=True)
                rc = col.stop(timeout=30)
        assert rc == 3, col.stderr()  # stopped with records undelivered
        assert "second signal: stopping now" in col.stderr()
    finally:
        os.close(rfd)


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- routing by tag, the CLI, pipelines/ ----------------------------------------------------------------
def test_route_and_filter_by_forward_tag(tmp_path):
    outs = {k: tmp_path / f"{k}.ndjson" for k in ("containers", "apps", "rest", "matched")}
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"]}},
        "transforms": {
            "nodebug": {"type": "filter", "inputs": ["fwd"], "exclude": "app.debug.**"},
            "route": {
                "type": "route",
                "inputs": ["nodebug"],
                "routes": {"containers": "log-test-container-*", "apps": "{app,svc}.**"},
            },
        },
        "sinks": {
            "containers": {"type": "file", "inputs": ["route.containers"], "path": str(outs["containers"])},
            "apps": {"type": "file", "inputs": ["route.apps"], "path": str(outs["apps"])},
            "rest": {"type": "file", "inputs": ["route._unmatched"], "path": str(outs["rest"])},
            "matched": {"type": "file", "inputs": ["fwd"], "path": str(outs["matched"]), "match": "svc.*"},
        },
    }
    tags = ["log-test-container-A", "log-test-container-B", "app", "app.web.1", "svc.db", "app.debug.x", "other.x"]
    with BackgroundPipeline(cfg) as bg:
        run = Running(bg, outs["rest"])
        with Client(run.port) as c:
            for t in tags:
                c.send(message(t, T0, {"message": t}, {"chunk": t}))
            assert {c.recv()["ack"] for _ in tags} == set(tags)  # acked once every branch finalized
        assert bg.stop() == 0
    got = {k: [r["message"] for r in read_ndjson(p)] for k, p in outs.items()}
    assert got["containers"] == ["log-test-container-A", "log-test-container-B"]
    assert got["apps"] == ["app", "app.web.1", "svc.db"]
    assert got["rest"] == ["other.x"]
    assert got["matched"] == ["svc.db"]


def test_cli_receive_forward(tmp_path):
    port = free_port()
    out = tmp_path / "out.ndjson"
    args = ["--log-level", "info", "receive", "--listen", f"forward+tcp://127.0.0.1:{port}", "--output", f"file:{out}"]
    args += ["--data-dir", str(tmp_path / "s"), "--metadata", "files"]
    with Collector(*args).start(tmp_path / "collector.log") as col:
        wait_until(lambda: _can_connect(port), 30, what="collector receive to listen")
        with Client(port) as c:
            c.send(message("log-test-container-A", T0, docker_rec("yoo A"), {"chunk": "cli"}))
            assert c.recv() == {"ack": "cli"}
        assert col.stop() == 0, col.stderr()
    (rec,) = read_ndjson(out)
    assert rec["message"] == "yoo A"
    assert rec["tags"] == ["log-test-container-A"]
    assert rec["container"]["id"] == CID
    assert f"listening for the forward protocol on tcp://127.0.0.1:{port}" in col.stderr()


def test_pipeline_examples_validate():
    examples = sorted((REPO / "pipelines").glob("fluentd-*.yaml"))
    assert examples
    r = run_cli("validate", "-c", *map(str, examples))
    assert r.returncode == 0, r.stderr


def test_once_mode_does_not_listen(tmp_path):
    assert run_once(pipeline_config(tmp_path, tmp_path / "out.ndjson")) == 0


# -- the decoder on its own: ids, split lines, Fields sharing --------------------------------------------
@pytest.fixture
def decoder(tmp_path) -> Iterator[Decoder]:
    telemetry = Telemetry()
    dl = DeadLetter(tmp_path, telemetry)
    ctx = types.SimpleNamespace(hostname="h", telemetry=telemetry, deadletter=dl)
    cfg = FluentForwardConfig(type="fluent_forward", max_record_bytes=1024, batch={"max_events": 100})
    yield Decoder(Intake("fwd", cfg, ctx), "peer:1", lambda chunk: None)
    dl.close()


def decode_all(dec: Decoder, wire: bytes) -> list[Any]:
    dec.feed(wire)
    units = [*dec.units(), dec.take()]
    return [b for u in units for b in dec.intake.batches(u)]


def test_a_chunk_spread_over_batches_and_units_is_acked_once_with_their_summed_outcome(tmp_path):
    """One message, records of three containers (three batches) in two units (max_events 4):
    the ack is sent once, after the last batch, carrying what every batch reported."""
    telemetry = Telemetry()
    dl = DeadLetter(tmp_path, telemetry)
    ctx = types.SimpleNamespace(hostname="h", telemetry=telemetry, deadletter=dl)
    cfg = FluentForwardConfig(type="fluent_forward", batch={"max_events": 4})
    sent: list[str] = []
    dec = Decoder(Intake("fwd", cfg, ctx), "peer:1", sent.append)
    entries = [[T0, docker_rec(f"m{i}", cid=str(i % 3) * 64)] for i in range(6)]
    batches = decode_all(dec, pack_message("t", entries, {"chunk": "c1"}))
    assert len(batches) == 5 and dec.open_chunks == 1  # units of 4 (3 containers) and 2 (2) records
    batches[0].ack.done(rejected=1)
    batches[4].ack.done(failed=2)
    for b in batches[1:4]:
        assert sent == []
        b.ack.done()
    assert sent == ["c1"] and dec.open_chunks == 0

    def acks(status: str) -> float:
        return telemetry.value("collector_acks_total", component="fwd", status=status)

    assert (acks("delivered"), acks("rejected"), acks("failed")) == (0, 0, 1)  # the worst
    dl.close()


def test_ids_are_stable_with_a_chunk_and_unique_without(decoder):
    wire = pack_message("t", [[T0, {"message": str(i)}] for i in range(3)], {"chunk": "Q2h1bmsx"})
    (b,) = decode_all(decoder, wire)
    assert b.ids == ["Q2h1bmsx-0", "Q2h1bmsx-1", "Q2h1bmsx-2"]
    (again,) = decode_all(decoder, wire)  # a resent chunk: the same ids, so no duplicate downstream
    assert again.ids == b.ids
    anon = [i for b in decode_all(decoder, pack_message("t", [[T0, {"message": "x"}]] * 500)) for i in b.ids]
    assert len(set(anon)) == 500


def test_batches_share_fields_per_tag_and_container(decoder):
    wire = b"".join(
        message(tag, T0, docker_rec("m", cid=cid, name="/" + cid[:4]))
        for tag, cid in [("a", "c1" * 32), ("a", "c2" * 32), ("b", "c1" * 32), ("a", "c1" * 32)]
    )
    batches = decode_all(decoder, wire)
    assert [(b.tag, len(b), b.meta.get("container.id")) for b in batches] == [
        ("a", 2, "c1" * 32),
        ("a", 1, "c2" * 32),
        ("b", 1, "c1" * 32),
    ]
    again = decode_all(decoder, message("a", T0, docker_rec("m", cid="c1" * 32, name="/c1c1")))
    assert again[0].meta is batches[0].meta  # one Fields per (tag, container): encoded once
    assert batches[0].meta.data == {
        "host": {"name": "h"},
        "observer": {"hostname": "h"},
        "tags": ["a"],
        "container": {"id": "c1" * 32, "name": "c1c1"},
    }


def test_batches_are_bounded(decoder):
    batches = decode_all(decoder, pack_message("t", pack_entries([(T0, {"message": "m"})] * 250)))
    assert [len(b) for b in batches] == [100, 100, 50]


def test_batches_are_bounded_in_bytes(tmp_path):
    """batch.max_bytes: records of 1000 characters (+64 each, see records.py) in batches of 8 KiB."""
    telemetry = Telemetry()
    dl = DeadLetter(tmp_path, telemetry)
    ctx = types.SimpleNamespace(hostname="h", telemetry=telemetry, deadletter=dl)
    cfg = FluentForwardConfig(type="fluent_forward", batch={"max_events": 1000, "max_bytes": 8192})
    dec = Decoder(Intake("fwd", cfg, ctx), "peer:1", lambda chunk: None)
    batches = decode_all(dec, pack_message("t", pack_entries([(T0, {"message": "m" * 1000})] * 20)))
    dl.close()
    assert [len(b) for b in batches] == [8, 8, 4]
    assert all(b.nbytes <= 8192 + 1064 for b in batches)


def test_split_lines_are_rejoined_per_container_and_stream(decoder):
    wire = b"".join(
        message("t", T0 + i, r)
        for i, r in enumerate(
            [
                part("out-1 ", "P", 1, False),
                part("err-1 ", "E", 1, False, "stderr"),
                part("other ", "O", 1, False, cid="ff" * 32),
                docker_rec("a whole line", "stdout", cid="ee" * 32),
                part("out-2 ", "P", 2, False),
                part("err-2", "E", 2, True, "stderr"),
                part("out-3", "P", 3, True),
                part("done", "O", 2, True, cid="ff" * 32),
            ]
        )
    )
    recs = {(b.meta.get("container.id")[:2], ev["stream"]): ev for b in decode_all(decoder, wire) for ev in b.events}
    assert {k: ev["message"] for k, ev in recs.items()} == {
        ("c0", "stdout"): "out-1 out-2 out-3",
        ("c0", "stderr"): "err-1 err-2",
        ("ee", "stdout"): "a whole line",
        ("ff", "stdout"): "other done",
    }
    assert recs["c0", "stdout"]["@timestamp"] == "2024-05-01T12:00:00.000000000Z"  # the first part's time
    assert recs["c0", "stderr"]["@timestamp"] == "2024-05-01T12:00:01.000000000Z"
    assert not decoder.partials


def test_split_lines_truncated_incomplete_and_out_of_order(decoder):
    big = "x" * 600
    wire = b"".join(
        message("t", T0, r)
        for r in [
            part(big, "A", 1, False),
            part(big, "A", 2, False),  # past max_record_bytes (1024): cut
            part(big, "A", 3, True),
            part("second ", "B", 2, False),  # ordinals out of order: put back in order
            part("first ", "B", 1, False),
            part("third", "B", 3, True),
            part("never finished", "C", 1, False),
            part("new line", "D", 1, True),  # a new partial_id on the same stream ends C
        ]
    )
    evs = [ev for b in decode_all(decoder, wire) for ev in b.events]
    assert evs[0]["message"] == "x" * 1024
    assert evs[0]["log"] == {"flags": ["truncated"]}
    assert evs[1]["message"] == "first second third"
    assert "log" not in evs[1]
    assert evs[2]["message"] == "never finished"
    assert evs[2]["log"] == {"flags": ["incomplete"]}
    assert evs[3]["message"] == "new line"


def test_pending_split_lines_are_bounded(decoder):
    from collector.sources.fluent_forward.records import MAX_PENDING_PARTIALS

    n = MAX_PENDING_PARTIALS + 10
    wire = b"".join(message("t", T0, part(f"start {i}", f"P{i}", 1, False, cid=f"{i:064x}")) for i in range(n))
    evs = [ev for b in decode_all(decoder, wire) for ev in b.events]
    assert len(decoder.partials) == MAX_PENDING_PARTIALS
    assert [ev["message"] for ev in evs] == [f"start {i}" for i in range(10)]  # the oldest, as they are
    assert all(ev["log"]["flags"] == ["incomplete"] for ev in evs)


def test_a_split_line_that_stops_is_emitted_after_the_timeout(decoder):
    decoder.feed(message("t", T0, part("half", "H", 1, False)))
    assert [*decoder.units()] == [] and decoder.take().count == 0
    assert decoder.flush_partials(older_than=60) == 0
    assert decoder.flush_partials(older_than=0) == 1
    (b,) = decoder.intake.batches(decoder.take())
    assert b.events[0]["message"] == "half"
    assert b.events[0]["log"]["flags"] == ["incomplete"]


def test_a_closed_connection_and_its_records_are_freed_without_waiting_for_a_full_gc(tmp_path):
    """Clients that connect, send a chunk, read its ack and go, every second, for months: each
    closed connection (its decoder's buffers, ~65 kB) and each acknowledged chunk's records were
    kept by reference cycles until a full collection, which app.tune_gc makes rare (measured:
    RSS +8 MB a minute with two such clients)."""
    import gc

    from collector.sources.fluent_forward.connection import Connection
    from collector.sources.fluent_forward.intake import Unit

    def alive(cls: type) -> int:
        return sum(1 for o in gc.get_objects() if type(o) is cls)

    with forward_pipeline(tmp_path) as run:
        gc.collect()
        gc.disable()  # only reference counting frees anything from here
        try:
            for i in range(30):
                with Client(run.port) as c:
                    c.send(pack_message("t", [[T0, {"message": f"m{i}"}]], {"chunk": f"c{i}"}))
                    assert c.recv() == {"ack": f"c{i}"}
            wait_until(lambda: not run.source.connections, what="the connections to close")
            assert alive(Connection) == 0 and alive(Unit) <= 1
        finally:
            gc.enable()
        assert len(run.records()) == 30


def test_fluent_bit_entries_with_metadata_and_groups(decoder):
    """``[[time, metadata], record]``: Fluent Bit's forward output since 4.x, by default."""
    group_start = [[ExtType(0, b"\xff\xff\xff\xff\0\0\0\0"), {"schema": "otlp"}], {"resource": {"a": 1}}]
    group_end = [[ExtType(0, b"\xff\xff\xff\xfe\0\0\0\0"), {}], {}]
    otlp = {
        "otlp": {
            "severity_number": 17,
            "severity_text": "ERROR",
            "trace_id": bytes(range(16)),
            "span_id": b"\x01" * 8,
            "attributes": {"http.method": "GET"},
            "trace_flags": 1,
        }
    }
    entries = [
        [[event_time(T0, 5), {}], {"log": "plain"}],
        group_start,
        [[event_time(T0, 6), otlp], {"log": "from otel"}],
        group_end,
        [[event_time(T0, 7), {"k": "v"}], docker_rec("from docker", hostname="web-host")],
    ]
    batches = decode_all(decoder, pack_message("fb", entries, {"chunk": "c", "size": 5}))
    recs = {r["message"]: r for b in batches for r in b.records()}
    assert list(recs) == ["plain", "from otel", "from docker"]  # group markers carry no record
    assert recs["plain"]["@timestamp"] == "2024-05-01T12:00:00.000000005Z"
    assert "fluent" not in recs["plain"]  # empty metadata: nothing to keep
    otel = recs["from otel"]
    assert otel["trace"] == {"id": bytes(range(16)).hex()} and otel["span"] == {"id": "01" * 8}
    assert otel["log"] == {"level": "error", "syslog": {"severity": {"code": 3, "name": "error"}}}
    assert otel["fluent"] == {"metadata": {"otlp": {"attributes": {"http.method": "GET"}, "trace_flags": 1}}}
    d = recs["from docker"]
    assert d["fluent"] == {"metadata": {"k": "v"}} and d["container"]["id"] == CID
    assert d["host"] == {"name": "web-host"}  # the record says which host it came from
    ids = [i for b in batches for i in b.ids]
    assert ids == ["c-0", "c-2", "c-4"]  # indexes in the message, markers included: stable on resend


def test_host_name_is_the_sender(tmp_path):
    telemetry = Telemetry()
    dl = DeadLetter(tmp_path, telemetry)
    ctx = types.SimpleNamespace(hostname="collector-host", telemetry=telemetry, deadletter=dl)
    intake = Intake("fwd", FluentForwardConfig(type="fluent_forward"), ctx)
    rec = message("t", T0, {"message": "m"})
    hosts = {}
    for peer in ("127.0.0.1:5000", "[::1]:5000", "unix", "10.1.2.3:5000", "[2001:db8::7]:1"):
        (b,) = decode_all(Decoder(intake, peer, lambda chunk: None), rec)
        hosts[peer] = (b.meta.get("host.name"), b.meta.get("observer.hostname"))
    assert hosts == {
        "127.0.0.1:5000": ("collector-host", "collector-host"),  # a local client: this host
        "[::1]:5000": ("collector-host", "collector-host"),
        "unix": ("collector-host", "collector-host"),
        "10.1.2.3:5000": ("10.1.2.3", "collector-host"),  # a remote one that does not say: its address
        "[2001:db8::7]:1": ("2001:db8::7", "collector-host"),
    }
    dec = Decoder(intake, "10.1.2.3:5000", lambda chunk: None)
    dec.client_host("localhost")  # Fluent Bit's default self_hostname says nothing
    assert decode_all(dec, rec)[0].meta.get("host.name") == "10.1.2.3"
    dec.client_host("edge-7")
    assert decode_all(dec, rec)[0].meta.get("host.name") == "edge-7"
    (b,) = decode_all(dec, message("t", T0, {"message": "m", "host": "said"}))
    assert b.meta.get("host.name") == "said" and "host" not in b.events[0]
    dl.close()


def test_the_handshake_hostname_becomes_host_name(tmp_path):
    with forward_pipeline(tmp_path, shared_key="k") as run, Client(run.port) as c:
        c.handshake("k", hostname="fluent-bit-node-3")
        c.send(message("t", T0, {"message": "m"}, {"chunk": "a"}))
        assert c.recv() == {"ack": "a"}
        (rec,) = run.records()
    assert rec["host"] == {"name": "fluent-bit-node-3"}
    assert rec["observer"] == {"hostname": socket.gethostname()}
