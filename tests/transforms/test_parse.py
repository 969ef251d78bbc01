"""The ``parse`` transform in a real pipeline: json-file logs in, a file out.

Parsing is best effort and never loses a record: what does not parse goes on as it came,
counted as ``collector_errors_total{reason="parse_failed"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import ConfigError, validate_config
from tests.helpers import docker_line, read_ndjson, run_once_counted

CID = "e" * 64


def write(tmp_path: Path, messages: list[str]) -> None:
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{CID}-json.log", "ab") as f:
        for i, m in enumerate(messages):
            f.write(docker_line(m + "\n", "stdout", f"2024-05-01T12:00:00.{i:09d}Z"))


def run(tmp_path: Path, messages: list[str], **parse: Any) -> tuple[list[dict[str, Any]], float]:
    write(tmp_path, messages)
    rc, tel = run_once_counted(
        {
            "data_dir": str(tmp_path / "state"),
            "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
            "transforms": {"p": {"type": "parse", "inputs": ["files"], **parse}},
            "sinks": {"out": {"type": "file", "inputs": ["p"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
        }
    )
    assert rc == 0
    return read_ndjson(tmp_path / "out.ndjson"), tel.value(
        "collector_errors_total", component="p", reason="parse_failed"
    )


def test_json_objects_become_fields_and_their_level_the_one_vocabulary(tmp_path):
    lines = [
        orjson.dumps({"level": "WARN", "msg": "disk 91%", "disk": {"pct": 91}}).decode(),
        orjson.dumps({"severity": "error", "msg": "boom"}).decode(),
        orjson.dumps({"level": 30, "msg": "pino info"}).decode(),  # pino's numbers
        orjson.dumps({"lvl": "Success", "msg": "not a syslog level"}).decode(),
        "plain text, not JSON",
        '{"truncated": ',
        "[1, 2, 3]",  # JSON, but not an object
    ]
    recs, failed = run(tmp_path, lines)
    assert [r["message"] for r in recs] == lines  # the message itself is kept as it was
    assert recs[0]["json"] == {"level": "WARN", "msg": "disk 91%", "disk": {"pct": 91}}
    assert recs[0]["log"]["level"] == "warning" and recs[0]["log"]["syslog"]["severity"] == {
        "code": 4,
        "name": "warning",
    }
    assert recs[1]["log"]["level"] == "error" and recs[1]["log"]["syslog"]["severity"]["code"] == 3
    assert recs[2]["log"]["level"] == "info" and recs[2]["log"]["syslog"]["severity"]["code"] == 6
    assert recs[3]["log"]["level"] == "success" and "syslog" not in recs[3]["log"]  # kept, never guessed
    for r in recs[4:]:
        assert "json" not in r and "level" not in r.get("log", {})
    assert failed == 3


def test_json_with_a_message_key_and_a_target(tmp_path):
    line = orjson.dumps({"msg": "user logged in", "user": "ann", "level": "info"}).decode()
    recs, failed = run(tmp_path, [line, "not json"], message_key="msg", target="app")
    assert failed == 1
    assert recs[0]["message"] == "user logged in"
    assert recs[0]["app"] == {"msg": "user logged in", "user": "ann", "level": "info"}
    assert "json" not in recs[0]
    assert recs[1]["message"] == "not json" and "app" not in recs[1]


def test_regex_named_groups_become_fields_with_dots_for_double_underscores(tmp_path):
    pattern = r"^(?P<http__method>[A-Z]+) (?P<url__path>\S+) (?P<http__status>\d{3}) (?P<log__level>[a-z]+)$"
    lines = ["GET /orders 200 info", "POST /pay 502 err", "garbage", "PUT /x 201 nonsense"]
    recs, failed = run(tmp_path, lines, format="regex", pattern=pattern)
    assert failed == 1
    assert [r["message"] for r in recs] == lines
    assert recs[0]["http"] == {"method": "GET", "status": "200"} and recs[0]["url"] == {"path": "/orders"}
    assert recs[0]["log"]["level"] == "info" and recs[0]["log"]["syslog"]["severity"]["code"] == 6
    assert recs[1]["log"]["level"] == "error"  # "err": the one vocabulary
    assert "http" not in recs[2]
    assert recs[3]["log"]["level"] == "nonsense" and "syslog" not in recs[3]["log"]


def test_another_field_can_be_parsed(tmp_path):
    """``field`` names what to parse; a record where it is absent (or not text) is left alone,
    and not counted as a failure."""
    write(tmp_path, ["first", "second"])
    rc, tel = run_once_counted(
        {
            "data_dir": str(tmp_path / "state"),
            "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
            "transforms": {
                "p": {
                    "type": "parse",
                    "inputs": ["files"],
                    "format": "regex",
                    "field": "log.file.path",
                    "pattern": r"/containers/(?P<container__from_path>[0-9a-f]{12})",
                },
                "q": {"type": "parse", "inputs": ["p"], "field": "no.such.field"},
            },
            "sinks": {"out": {"type": "file", "inputs": ["q"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
        }
    )
    assert rc == 0
    recs = read_ndjson(tmp_path / "out.ndjson")
    assert [r["container"]["from_path"] for r in recs] == [CID[:12], CID[:12]]
    assert [r["message"] for r in recs] == ["first", "second"]
    assert tel.value("collector_errors_total", reason="parse_failed") == 0


@pytest.mark.parametrize(
    ("parse", "said"),
    [
        ({"format": "regex"}, "format: regex needs a `pattern`"),
        ({"format": "regex", "pattern": "(unclosed"}, "bad pattern"),
        ({"format": "regex", "pattern": r"^(\d+)$"}, "no named groups"),
        ({"format": "yaml"}, "format"),
    ],
)
def test_bad_settings_are_configuration_errors(parse, said):
    cfg = {
        "sources": {"f": {"type": "fluent_forward"}},
        "transforms": {"p": {"type": "parse", "inputs": ["f"], **parse}},
        "sinks": {"o": {"type": "console", "inputs": ["p"]}},
    }
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert said in str(e.value), str(e.value)
