"""One level vocabulary across sources (collector/levels.py).

Issue 15 found GELF level 6 stored as ``informational``, the json-file ``parse`` transform
giving ``info`` and the forward source keeping the client's own ``level``: one field, three
vocabularies.  Here every source receives the same levels and must write the same fields.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from collector import levels
from collector.codecs.gelf import level_code
from tests.helpers import BackgroundPipeline, docker_lines, read_ndjson, wait_until

# what clients send -> (log.level, log.syslog.severity.code)
SENT: list[tuple[Any, str, int]] = [
    ("emerg", "emergency", 0),
    ("PANIC", "emergency", 0),
    ("alert", "alert", 1),
    ("crit", "critical", 2),
    ("FATAL", "critical", 2),
    ("err", "error", 3),
    ("ERROR", "error", 3),
    ("Warn", "warning", 4),
    ("warning", "warning", 4),
    ("notice", "notice", 5),
    ("informational", "info", 6),
    ("INFO", "info", 6),
    ("6", "info", 6),
    (6, "info", 6),
    ("debug", "debug", 7),
    ("trace", "debug", 7),
    (50, "error", 3),  # pino / bunyan
    (30, "info", 6),
]


def test_the_vocabulary():
    assert levels.NAMES == ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
    for sent, name, code in SENT:
        assert levels.code(sent) == code, sent
        assert levels.fields(code) == {"level": name, "syslog": {"severity": {"code": code, "name": name}}}
        assert level_code(sent) == code  # the GELF sink reads levels the same way
    for odd in ("verbose-ish", "", None, True, 8, -1, 2.5, "99999999999"):
        assert levels.code(odd) is None, odd
    assert [levels.from_otel(n) for n in (1, 5, 9, 13, 17, 21, 24)] == [7, 7, 6, 4, 3, 2, 2]
    assert levels.from_otel(0) is None and levels.from_otel(25) is None


@pytest.fixture
def three_sources(tmp_path: Path) -> Any:
    log = tmp_path / "c" / "abc-json.log"
    log.parent.mkdir()
    log.write_bytes(b"")
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {
            "files": {"type": "docker_json_file", "paths": [str(log)], "read_from": "beginning"},
            "fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"]},
            "gelf": {"type": "gelf", "listen": ["udp://127.0.0.1:0"]},
        },
        "transforms": {"parse": {"type": "parse", "inputs": ["files"]}},
        "sinks": {"out": {"type": "file", "inputs": ["parse", "fwd", "gelf"], "path": str(out), "fsync": "never"}},
    }
    with BackgroundPipeline(cfg) as bg:
        yield bg, log, out


def test_every_source_writes_the_same_level_fields(three_sources):
    bg, log, out = three_sources
    fwd = bg.pipeline.sources["fwd"]
    gelf = bg.pipeline.sources["gelf"]
    wait_until(lambda: fwd.address and gelf.bound, 10, what="listening")
    gelf_port = int(gelf.bound[0].rsplit(":", 1)[1])
    lines = [orjson.dumps({"level": sent, "msg": f"file {i}"}).decode() for i, (sent, _, _) in enumerate(SENT)]
    log.write_bytes(docker_lines(lines))
    with socket.create_connection(fwd.address) as c:
        for i, (sent, _, _) in enumerate(SENT):
            c.sendall(msgpack.packb(["app", 1714564800, {"message": f"forward {i}", "level": sent}]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for i, (sent, _, _) in enumerate(SENT):
            u.sendto(orjson.dumps({"host": "h", "short_message": f"gelf {i}", "level": sent}), ("127.0.0.1", gelf_port))
    wait_until(lambda: len(read_ndjson(out)) >= 3 * len(SENT), 30, what="every record")
    got = {}
    for r in read_ndjson(out):
        text = r.get("json", {}).get("msg") or r["message"]
        got[text] = r
    for i, (sent, name, code) in enumerate(SENT):
        for src in ("file", "forward", "gelf"):
            r = got[f"{src} {i}"]
            assert r["log"]["level"] == name, (src, sent, r)
            assert r["log"]["syslog"]["severity"] == {"code": code, "name": name}, (src, sent)
            assert "level" not in r, (src, sent)  # the client's own field became log.level


def test_a_level_outside_the_vocabulary_is_kept_as_written(three_sources):
    bg, log, out = three_sources
    fwd = bg.pipeline.sources["fwd"]
    wait_until(lambda: fwd.address, 10, what="listening")
    log.write_bytes(docker_lines([orjson.dumps({"level": "SUCCESS", "msg": "file"}).decode()]))
    with socket.create_connection(fwd.address) as c:
        c.sendall(msgpack.packb(["app", 1714564800, {"message": "forward", "level": "SUCCESS"}]))
    wait_until(lambda: len(read_ndjson(out)) >= 2, 30, what="both records")
    by = {r.get("json", {}).get("msg") or r["message"]: r for r in read_ndjson(out)}
    assert by["file"]["log"]["level"] == "success"  # parse: lowercase, no severity code guessed
    assert "syslog" not in by["file"]["log"]
    assert by["forward"]["level"] == "SUCCESS" and "log" not in by["forward"]  # forward: the client's field
