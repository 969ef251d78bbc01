"""The syslog source: the codec on the RFCs' own examples, util-linux `logger` over every
transport, hostile input and the connection limits.

The collector runs in-process (BackgroundPipeline: syslog source -> file sink); clients send over
loopback and unix sockets.  Docker's syslog driver: tests/e2e/test_syslog_docker.py; rsyslog's
omfwd: tests/interop/test_rsyslog.py.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.codecs.syslog import Framer, FramingError, SyslogError, parse
from collector.config import ConfigError, validate_config
from tests.helpers import BackgroundPipeline, read_ndjson, wait_until


class Running:
    def __init__(self, bp: BackgroundPipeline, out: Path, data_dir: Path) -> None:
        self.bp = bp
        self.out = out
        self.data_dir = data_dir
        self.source = bp.pipeline.sources["syslog"]
        wait_until(lambda: len(self.source.bound) == len(self.source.config.listen), timeout=10, what="listening")
        self.urls = {u.split(":", 1)[0]: u for u in self.source.bound}

    def port(self, scheme: str) -> int:
        return int(self.urls[scheme].rsplit(":", 1)[1])

    def records(self) -> list[dict[str, Any]]:
        return read_ndjson(self.out)

    def wait(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.records()) >= n, timeout=timeout, what=f"{n} records")
        return self.records()

    def errors(self) -> dict[str, float]:
        snap = self.bp.telemetry.snapshot()
        prefix = "collector_errors_total{component=syslog,reason="
        return {k[len(prefix) : -1]: v for k, v in snap.items() if k.startswith(prefix) and v}

    def deadletters(self) -> list[dict[str, Any]]:
        return read_ndjson(self.data_dir / "dead-letter" / "syslog.ndjson")


@contextlib.contextmanager
def syslog_collector(tmp_path: Path, listen: list[str], **source: Any) -> Iterator[Running]:
    out = tmp_path / "out.ndjson"
    data_dir = tmp_path / "state"
    source.setdefault("resolve_containers", False)
    cfg = {
        "data_dir": str(data_dir),
        "shutdown_timeout": 3,
        "sources": {"syslog": {"type": "syslog", "listen": listen, **source}},
        "sinks": {"out": {"type": "file", "inputs": ["syslog"], "path": str(out), "fsync": "never"}},
    }
    with BackgroundPipeline(cfg) as bp:
        yield Running(bp, out, data_dir)


# -- the codec ---------------------------------------------------------------------------------
def test_rfc5424_examples():
    # RFC 5424 6.5, examples 1-4 (example 1 with its BOM)
    m = parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed")
    assert (m.facility, m.severity, m.priority) == (4, 2, 34)
    assert (m.timestamp, m.hostname, m.appname, m.procid, m.msgid) == (
        "2003-10-11T22:14:15.003000Z",
        "mymachine.example.com",
        "su",
        None,
        "ID47",
    )
    assert m.text == "'su root' failed" and m.structured_data is None and m.format == "rfc5424"
    m = parse(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.")
    assert m.timestamp == "2003-08-24T12:14:15.000003Z" and m.procid == "8710" and m.text.startswith("%% It's")
    m = parse(
        b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
        b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'
    )
    assert m.structured_data == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
        "examplePriority@32473": {"class": "high"},
    }
    assert m.text == ""
    # escapes, a repeated PARAM-NAME, dots (ES would make objects of them), NILVALUE timestamp
    m = parse(b'<13>1 - h a 1 m [x.y@1 q="a\\"b\\\\c\\]d" r="1" r="2" s.t=""] text \n')
    assert m.timestamp is None
    assert m.structured_data == {"x_y@1": {"q": 'a"b\\c]d', "r": ["1", "2"], "s_t": ""}}
    assert m.text == "text "  # the newline senders add is removed, nothing else


def test_rfc3164_and_what_is_sent_under_its_name():
    now = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))
    # Docker's rfc3164 (srslog RFC3164Formatter: time.Stamp pads the day with a space)
    m = parse(b"<30>May  1 11:59:58 docker-host 0123456789ab[1234]: hello world\n", now=now)
    assert (m.hostname, m.appname, m.procid, m.text) == ("docker-host", "0123456789ab", "1234", "hello world")
    assert m.timestamp == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now - 2))
    # Docker's default format (UnixFormatter), glibc syslog(3), logger on a socket: no hostname
    m = parse(b"<27>May  1 11:59:58 web-1[99]: to stderr", now=now)
    assert (m.hostname, m.appname, m.procid, m.text, m.severity) == (None, "web-1", "99", "to stderr", 3)
    # rsyslog's high-precision forwarding: RFC 3339 where the BSD time goes
    m = parse(b"<13>2024-05-01T12:00:00.123456+02:00 host tag: msg: with colons")
    assert (m.timestamp, m.hostname, m.appname, m.text) == (
        "2024-05-01T10:00:00.123456Z",
        "host",
        "tag",
        "msg: with colons",
    )
    # December's lines read in January are last year's
    jan = time.mktime((2025, 1, 1, 0, 0, 5, 0, 0, -1))
    dec = time.mktime((2024, 12, 31, 23, 59, 59, 0, 0, -1))
    assert parse(b"<13>Dec 31 23:59:59 h t: x", now=jan).timestamp == time.strftime(
        "%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(dec)
    )
    # no valid timestamp: everything after <PRI> is the message (RFC 3164 4.3.2)
    m = parse(b"<13>just some text")
    assert (m.timestamp, m.hostname, m.appname, m.text) == (None, None, None, "just some text")
    # not UTF-8: replaced and flagged, not lost
    m = parse(b"<13>May  1 11:59:58 h t: caf\xe9", now=now)
    assert m.text == "caf\ufffd" and m.flags == ["invalid_utf8"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"no pri at all", "no_priority"),
        (b"<192>1 - - - - - -", "bad_priority"),
        (b"<013>1 - - - - - -", "bad_priority"),
        (b"<13>1 2024-13-01T00:00:00Z h a - - -", "bad_timestamp"),
        (b"<13>1 - h a - -", "bad_rfc5424_header"),
        (b'<13>1 - h a - - [id x="1" msg', "bad_structured_data"),
        (b"<13>1 - h a - - [id x=1] msg", "bad_structured_data"),
        (b"<13>1 - h a - - -msg", "bad_structured_data"),
    ],
)
def test_what_cannot_be_read_has_a_reason(raw, reason):
    with pytest.raises(SyslogError) as e:
        parse(raw)
    assert e.value.reason == reason


def test_framer_octet_counting_and_newlines_mixed_split_anywhere():
    frames = [b"<13>1 - h a - - - one", b"<13>two\n", b"<13>1 - h a - - - three\nwith a newline"]
    wire = b"".join(b"%d %s" % (len(f), f) for f in frames[:1]) + b"<13>two\n" + b"%d %s" % (len(frames[2]), frames[2])
    for cut in range(1, len(wire)):
        f = Framer(1000)
        got = f.feed(wire[:cut]) + f.feed(wire[cut:])
        assert got == [frames[0], b"<13>two", frames[2]], cut
    f = Framer(10)
    assert f.feed(b"15 <13>0123456789a<13>ok\n") == [b"<13>ok"]  # too long, skipped by its length
    assert f.take_oversize() == [(b"<13>0123456789a"[:1024], 15)]
    assert f.feed(b"<13>0123456789abcdef") == [] and f.feed(b"xyz\n<13>b\n") == [b"<13>b"]
    assert [size for _, size in f.take_oversize()] == [20]
    with pytest.raises(FramingError):
        Framer(100).feed(b"12x <13>a")


# -- real clients ------------------------------------------------------------------------------
def logger(*args: str) -> None:
    subprocess.run(["logger", *args], check=True, timeout=30)


def test_util_linux_logger_over_udp_tcp_and_unix_sockets(tmp_path):
    stream_sock, dgram_sock = str(tmp_path / "s.sock"), str(tmp_path / "g.sock")
    listen = ["udp://127.0.0.1:0", "tcp://127.0.0.1:0", f"unix://{stream_sock}", f"unixgram://{dgram_sock}"]
    n = 50
    with syslog_collector(tmp_path, listen) as c:
        udp, tcp = str(c.port("udp")), str(c.port("tcp"))
        sends = {
            "udp-5424": ["-n", "127.0.0.1", "-P", udp, "-d", "--rfc5424"],
            "udp-3164": ["-n", "127.0.0.1", "-P", udp, "-d", "--rfc3164"],
            "tcp-newline": ["-n", "127.0.0.1", "-P", tcp, "-T"],
            "tcp-octet": ["-n", "127.0.0.1", "-P", tcp, "-T", "--octet-count"],
            "unix-stream": ["-u", stream_sock, "-T", "--socket-errors=on"],
            "unixgram": ["-u", dgram_sock, "-d", "--socket-errors=on"],
        }
        for mode, args in sends.items():
            for i in range(n):
                logger(*args, "-t", f"t-{mode}", "-p", "local3.warning", "-i", f"{mode} message {i} ünïcode")
        logger(
            "-n", "127.0.0.1", "-P", tcp, "-T", "-t", "sd", "--sd-id", "zoo@32473", "--sd-param", 'tiger="hungry"', "s"
        )
        recs = c.wait(len(sends) * n + 1)
    assert len(recs) == len(sends) * n + 1
    for mode in sends:
        mine = [r for r in recs if r["log"]["syslog"].get("appname") == f"t-{mode}"]
        assert sorted(r["message"] for r in mine) == sorted(f"{mode} message {i} ünïcode" for i in range(n)), mode
        for r in mine:
            assert r["log"]["level"] == "warning"
            assert r["log"]["syslog"]["severity"] == {"code": 4, "name": "warning"}
            assert r["log"]["syslog"]["facility"] == {"code": 19, "name": "local3"}
            assert r["log"]["syslog"]["priority"] == 19 * 8 + 4
            assert r["log"]["syslog"]["procid"].isdigit()  # logger -i
            assert r["tags"] == [f"t-{mode}"]
            assert r["host"]["name"] == socket.gethostname() and "flags" not in r["log"]
            assert r["observer"]["hostname"] == socket.gethostname()
            assert r["@timestamp"].endswith("Z")
    sd = next(r for r in recs if r["message"] == "s")
    assert sd["log"]["syslog"]["structured_data"]["zoo@32473"] == {"tiger": "hungry"}
    assert not Path(stream_sock).exists() and not Path(dgram_sock).exists()  # removed at stop


def test_tls_with_octet_counting(tmp_path):
    from tests.sources.test_gelf import make_cert

    cert, key = make_cert(tmp_path)
    with syslog_collector(tmp_path, ["tls://127.0.0.1:0"], tls={"cert_file": cert, "key_file": key}) as c:
        ctx = ssl.create_default_context(cafile=cert)
        with (
            socket.create_connection(("127.0.0.1", c.port("tls"))) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            for i in range(20):
                msg = f"<14>1 2024-05-01T12:00:00.{i:06d}Z h app - - - tls {i}\n".encode()
                s.sendall(b"%d %s" % (len(msg), msg))
            # kept open until delivered: closing with the server's session tickets unread sends a
            # reset, which may discard what the server had not read yet (as with any TCP peer)
            recs = c.wait(20)
    assert sorted(r["message"] for r in recs) == sorted(f"tls {i}" for i in range(20))
    assert {r["@timestamp"] for r in recs} == {f"2024-05-01T12:00:00.{i:06d}Z" for i in range(20)}


# -- hostile input and limits --------------------------------------------------------------------
def test_bad_input_is_dead_lettered_with_its_peer_and_the_rest_keeps_flowing(tmp_path, caplog):
    listen = ["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]
    with syslog_collector(tmp_path, listen, max_message_bytes=1024, dead_letter_per_second=1000) as c:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for i in range(300):
                u.sendto(b"garbage %d" % i, ("127.0.0.1", c.port("udp")))
            u.sendto(b"<13>1 - h a - - - " + b"x" * 2000, ("127.0.0.1", c.port("udp")))
            u.sendto(b"<13>1 - h good - - - after the garbage", ("127.0.0.1", c.port("udp")))
        with socket.create_connection(("127.0.0.1", c.port("tcp"))) as t:
            t.sendall(b"<13>no newline framing ok\nnot syslog\n<13>1 2024-99-01T00:00:00Z h a - - - bad time\n")
            t.sendall(b"3000 " + b"y" * 3000 + b"<13>1 - h good - - - after the long one\n")
        with socket.create_connection(("127.0.0.1", c.port("tcp"))) as t:  # framing lost: closed, reported
            t.sendall(b"12abc <13>x\n")
            assert closed(t)
        recs = c.wait(3)
        wait_until(lambda: c.errors().get("bad_framing"), what="bad_framing counted")
        errors = c.errors()
        dl = c.deadletters()
    assert sorted(r["message"] for r in recs) == ["after the garbage", "after the long one", "no newline framing ok"]
    assert errors["no_priority"] == 301 and errors["too_large"] == 2 and errors["bad_timestamp"] == 1
    assert {d["reason"] for d in dl} == {"no_priority", "too_large", "bad_timestamp", "bad_framing"}
    assert all(d["origin"]["peer"].startswith("127.0.0.1:") for d in dl)
    assert (
        next(d for d in dl if d["origin"]["transport"] == "tcp" and d["reason"] == "no_priority")["raw"] == "not syslog"
    )
    # one log line per reason per minute, whatever the volume, and never a traceback
    lines = [r for r in caplog.records if r.name.startswith("collector.sources.syslog") and r.levelname == "WARNING"]
    assert len(lines) <= 6, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records)


def closed(s: socket.socket) -> bool:
    """The collector closed (or reset) this connection."""
    s.settimeout(10)
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True


def test_slow_senders_per_peer_cap_and_idle_connections_make_room(tmp_path):
    with syslog_collector(
        tmp_path, ["tcp://127.0.0.1:0"], max_connections_per_peer=3, idle_timeout=1.0, read_timeout=1.0
    ) as c:
        addr = ("127.0.0.1", c.port("tcp"))
        # slowloris: a frame that never ends is cut after read_timeout, even while bytes trickle in
        slow = socket.create_connection(addr)
        t0 = time.monotonic()
        slow.sendall(b"<13>1 - h a - - - never ends")
        with contextlib.suppress(OSError):
            while time.monotonic() - t0 < 10:
                slow.sendall(b".")
                time.sleep(0.2)
        assert time.monotonic() - t0 < 5
        # three idle connections fill the per-peer cap; a fourth gets the slot of the longest idle
        idle = [socket.create_connection(addr) for _ in range(3)]
        wait_until(lambda: len(c.source.conns) == 3, what="3 connections")
        fresh = socket.create_connection(addr)
        fresh.sendall(b"<13>1 - h a - - - refused while the others are young\n")
        assert closed(fresh)  # refused: nobody idle for a second yet
        time.sleep(1.2)  # (the scenario: the three stay idle past idle_timeout)
        fresh = socket.create_connection(addr)
        fresh.sendall(b"<13>1 - h a - - - after a slot was freed\n")
        recs = c.wait(1)
        assert [r["message"] for r in recs] == ["after a slot was freed"]
        assert closed(idle[0])  # the longest idle one was closed
        errors = c.errors()
        for s in [*idle, fresh, slow]:
            s.close()
    assert errors["read_timeout"] == 1 and errors["too_many_connections_from_peer"] == 1


def test_config_errors(tmp_path):
    def check(**src: Any) -> str:
        cfg = {"sources": {"s": {"type": "syslog", **src}}, "sinks": {"o": {"type": "console", "inputs": ["s"]}}}
        with pytest.raises(ConfigError) as e:
            validate_config(cfg)
        return str(e.value)

    assert "listen on udp://" in check(listen=["http://x:1"])
    assert "needs `tls" in check(listen=["tls://127.0.0.1:6514"])
    assert "unixgram:///absolute/path" in check(listen=["unixgram://relative"])
    assert "give only `read_timeout`" in check(listen=["tcp://127.0.0.1:0"], frame_timeout=5, read_timeout=6)


def test_the_old_name_frame_timeout_still_works_and_says_its_new_name(caplog):
    cfg = {
        "sources": {"s": {"type": "syslog", "listen": ["tcp://127.0.0.1:0"], "frame_timeout": 5}},
        "sinks": {"o": {"type": "console", "inputs": ["s"]}},
    }
    assert validate_config(cfg).sources["s"].read_timeout == 5
    assert "`frame_timeout` is now `read_timeout`" in caplog.text


def test_a_file_where_the_socket_goes_is_not_replaced(tmp_path):
    precious = tmp_path / "important.log"
    precious.write_text("keep me")
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"syslog": {"type": "syslog", "listen": [f"unix://{precious}"], "resolve_containers": False}},
        "sinks": {"out": {"type": "console", "inputs": ["syslog"]}},
    }
    with BackgroundPipeline(cfg) as bp:
        bp.thread.join(10)
    assert bp.rc == 1 and precious.read_text() == "keep me"
