"""The ``filter`` transform in a real pipeline: json-file logs in, a file out.

A dropped record is control flow, not a loss: it is counted
(``collector_events_dropped_total{component,reason="filtered"}``) and finalized, so the source's
checkpoint moves past it and a second run neither delivers nor drops it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import ConfigError, validate_config
from tests.helpers import checkpoint_file, docker_line, read_ndjson, run_once_counted

WEB = "a" * 64  # the json-file source tags a batch with the container's short id: "aaaaaaaaaaaa"
API = "ab" * 32  # "abababababab"
DB = "c" * 64  # "cccccccccccc"


def write(root: Path, cid: str, lines: list[tuple[str, str]]) -> Path:
    """``lines``: (stream, message), written as Docker's json-file driver does."""
    d = root / "containers" / cid
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"{cid}-json.log"
    with open(log, "ab") as f:
        for i, (stream, msg) in enumerate(lines):
            f.write(docker_line(msg + "\n", stream, f"2024-05-01T12:00:00.{i:09d}Z"))
    return log


def pipeline(tmp_path: Path, **rules: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
        "transforms": {"only": {"type": "filter", "inputs": ["files"], **rules}},
        "sinks": {"out": {"type": "file", "inputs": ["only"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
    }


def delivered(tmp_path: Path) -> list[tuple[str, str]]:
    return [(r["container"]["id"], r["message"]) for r in read_ndjson(tmp_path / "out.ndjson")]


def dropped(telemetry: Any) -> float:
    return telemetry.value("collector_events_dropped_total", component="only", reason="filtered")


def offsets(tmp_path: Path) -> dict[str, int]:
    cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["files"]
    return {Path(v["live"]).parent.name: v["offset"] for v in cp.values()}


def three_containers(tmp_path: Path) -> dict[str, Path]:
    return {
        WEB: write(tmp_path, WEB, [("stdout", f"web {i}") for i in range(5)]),
        API: write(tmp_path, API, [("stdout", f"api {i}") for i in range(3)]),
        DB: write(tmp_path, DB, [("stdout", f"db {i}") for i in range(4)]),
    }


def test_match_and_exclude_by_tag_drop_whole_batches_and_count_them(tmp_path):
    logs = three_containers(tmp_path)
    cfg = pipeline(tmp_path, match="a*", exclude="abab*")  # "a*": web and api; then api excluded
    rc, tel = run_once_counted(cfg)
    assert rc == 0
    assert delivered(tmp_path) == [(WEB, f"web {i}") for i in range(5)]
    assert dropped(tel) == 3 + 4
    # dropped is finalized: the checkpoint is past every line of every file, dropped or not
    assert offsets(tmp_path) == {cid: log.stat().st_size for cid, log in logs.items()}
    rc, tel = run_once_counted(cfg)  # a second run reads nothing again: nothing new, nothing dropped
    assert rc == 0 and dropped(tel) == 0
    assert len(delivered(tmp_path)) == 5


def test_match_alone_keeps_only_matching_tags(tmp_path):
    three_containers(tmp_path)
    rc, tel = run_once_counted(pipeline(tmp_path, match="cccccccccccc"))
    assert rc == 0
    assert delivered(tmp_path) == [(DB, f"db {i}") for i in range(4)]
    assert dropped(tel) == 5 + 3


def test_keep_and_drop_by_field_regex(tmp_path):
    write(
        tmp_path,
        WEB,
        [
            ("stdout", "GET /healthz 200"),
            ("stderr", "GET /healthz 500"),
            ("stderr", "panic: nil map"),
            ("stdout", "GET /orders 200"),
            ("stderr", "warn: slow query"),
        ],
    )
    # keep: every rule must match (stderr only); drop: any rule matching drops (health checks)
    rc, tel = run_once_counted(pipeline(tmp_path, keep={"stream": "^stderr$"}, drop={"message": r"^GET /healthz\b"}))
    assert rc == 0
    assert [m for _, m in delivered(tmp_path)] == ["panic: nil map", "warn: slow query"]
    assert dropped(tel) == 3


def test_a_rule_can_name_a_field_the_records_of_a_batch_share(tmp_path):
    """``container.id`` lives in the batch's shared fields, not in each record."""
    three_containers(tmp_path)
    rc, tel = run_once_counted(pipeline(tmp_path, keep={"container.id": f"^{DB[:4]}"}))
    assert rc == 0
    assert delivered(tmp_path) == [(DB, f"db {i}") for i in range(4)]
    assert dropped(tel) == 5 + 3


def test_a_missing_field_fails_keep_and_passes_drop(tmp_path):
    three_containers(tmp_path)
    rc, tel = run_once_counted(pipeline(tmp_path, drop={"no.such.field": "."}))
    assert rc == 0 and len(delivered(tmp_path)) == 12 and dropped(tel) == 0
    logs = three_containers(tmp_path / "2")
    rc, tel = run_once_counted(pipeline(tmp_path / "2", keep={"no.such.field": "."}))
    assert rc == 0 and delivered(tmp_path / "2") == [] and dropped(tel) == 12
    assert offsets(tmp_path / "2") == {cid: log.stat().st_size for cid, log in logs.items()}  # all finalized


def test_a_batch_partly_dropped_keeps_the_ids_of_what_is_left(tmp_path):
    """The kept records keep their own ids (file and offset), not their neighbours'."""
    log = write(tmp_path, WEB, [("stdout", f"keep {i}") if i % 2 else ("stdout", f"drop {i}") for i in range(6)])
    rc, _ = run_once_counted(pipeline(tmp_path, drop={"message": "^drop"}))
    assert rc == 0
    recs = read_ndjson(tmp_path / "out.ndjson")
    assert [r["message"] for r in recs] == ["keep 1", "keep 3", "keep 5"]
    lines = log.read_bytes().splitlines(keepends=True)
    starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    assert [r["log"]["offset"] for r in recs] == [starts[1], starts[3], starts[5]]


@pytest.mark.parametrize(
    ("rules", "said"),
    [
        ({"keep": {"message": "("}}, "bad regular expression for 'message'"),
        ({"drop": {"stream": "[a-"}}, "bad regular expression for 'stream'"),
        ({"match": "a.{b"}, "match"),
        ({"exclude": "web}"}, "exclude"),
        ({"match": "  "}, "empty tag pattern"),
    ],
)
def test_bad_rules_are_configuration_errors(tmp_path, rules, said):
    with pytest.raises(ConfigError) as e:
        validate_config(pipeline(tmp_path, **rules))
    assert said in str(e.value), str(e.value)
