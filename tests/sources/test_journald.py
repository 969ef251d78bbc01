"""The journald source on a real journal (systemd-journald from tests/services/journald.sh):
systemd-cat and ``logger --journald`` write; the source reads with journalctl and keeps its
cursor.  Docker's journald log driver: tests/e2e/test_journald_docker.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from collector.codecs.journal_export import ExportReader, Oversize
from collector.config import ConfigError, validate_config
from tests.helpers import BackgroundPipeline, read_ndjson, run_once, wait_until

CID = "5" * 64


def journal_config(journal: Path, tmp_path: Path, match: list[str], **source: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "state"),
        "shutdown_timeout": 5,
        "sources": {"journal": {"type": "journald", "directory": str(journal), "match": match, **source}},
        "sinks": {
            "out": {"type": "file", "inputs": ["journal"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}
        },
    }


def checkpoints(tmp_path: Path) -> Path:
    """The pipeline's checkpoint document (one per pipeline, named by its outputs)."""
    found = list((tmp_path / "state" / "checkpoints").glob("*.json"))
    return found[0] if len(found) == 1 else tmp_path / "state" / "none.json"


def cat(ident: str, lines: list[str], priority: str = "info") -> None:
    subprocess.run(["systemd-cat", "-t", ident, "-p", priority], input="\n".join(lines) + "\n", text=True, check=True)


def send_fields(fields: list[tuple[str, str]]) -> None:
    """One entry with exactly these fields (util-linux logger --journald: one FIELD=value a line)."""
    subprocess.run(["logger", "--journald"], input="".join(f"{k}={v}\n" for k, v in fields), text=True, check=True)


def seen(journal: Path, match: str) -> int:
    out = subprocess.run(
        ["journalctl", "--directory", str(journal), "-o", "export", match], capture_output=True, check=True
    )
    return sum(1 for e in ExportReader(1 << 20).feed(out.stdout) if not isinstance(e, Oversize))


def test_systemd_cat_lines_once_each_and_the_cursor_resumes(journal, tmp_path):
    ident = f"coltest-{uuid.uuid4().hex[:8]}"
    cat(ident, [f"line {i} ünïcode" for i in range(100)], "warning")
    wait_until(lambda: seen(journal, f"SYSLOG_IDENTIFIER={ident}") == 100, what="100 entries in the journal")
    cfg = journal_config(journal, tmp_path, [f"SYSLOG_IDENTIFIER={ident}"])
    assert run_once(cfg) == 0
    recs = read_ndjson(tmp_path / "out.ndjson")
    assert [r["message"] for r in recs] == [f"line {i} ünïcode" for i in range(100)]
    for r in recs:
        assert r["log"]["level"] == "warning" and r["log"]["syslog"]["severity"] == {"code": 4, "name": "warning"}
        assert r["log"]["syslog"]["appname"] == ident
        assert r["systemd"]["transport"] == "stdout" and r["process"]["pid"] > 0
        assert r["host"]["name"] and r["@timestamp"].endswith("Z") and "container" not in r
    cursor = json.loads(checkpoints(tmp_path).read_text())["sources"]["journal"]["cursor"]
    assert cursor.startswith("s=")
    # again: nothing new; then 10 more lines: those 10, once
    assert run_once(cfg) == 0
    assert len(read_ndjson(tmp_path / "out.ndjson")) == 100
    cat(ident, [f"more {i}" for i in range(10)])
    wait_until(lambda: seen(journal, f"SYSLOG_IDENTIFIER={ident}") == 110, what="110 entries")
    assert run_once(cfg) == 0
    assert [r["message"] for r in read_ndjson(tmp_path / "out.ndjson")[100:]] == [f"more {i}" for i in range(10)]


def test_fields_newlines_custom_fields_and_a_presence_match(journal, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    send_fields([("MESSAGE", "no container"), ("TEST_RUN", run_id), ("PRIORITY", "3")])
    send_fields(
        [
            ("MESSAGE", "from a container"),
            ("TEST_RUN", run_id),
            ("CONTAINER_ID_FULL", CID),
            ("CONTAINER_ID", CID[:12]),
            ("CONTAINER_NAME", "web-1"),
            ("CONTAINER_TAG", "shop.web"),
            ("IMAGE_NAME", "registry:5000/shop/web:1.2"),
            ("SYSLOG_IDENTIFIER", "shop.web"),
            ("PRIORITY", "3"),
            ("APP_VERSION", "7"),
        ]
    )
    wait_until(lambda: seen(journal, f"TEST_RUN={run_id}") == 2, what="2 entries")
    assert run_once(journal_config(journal, tmp_path, [f"TEST_RUN={run_id}", "CONTAINER_NAME"])) == 0
    [r] = read_ndjson(tmp_path / "out.ndjson")
    assert r["message"] == "from a container" and r["stream"] == "stderr"
    assert r["container"] == {
        "id": CID,
        "name": "web-1",
        "image": {"name": "registry:5000/shop/web:1.2", "tag": ["1.2"]},
    }
    assert r["tags"] == ["shop.web"] and r["log"]["level"] == "error"
    assert r["journald"]["custom"] == {"test_run": run_id, "app_version": "7"}


def test_a_line_docker_split_is_rejoined_and_the_checkpoint_waits_for_its_end(journal, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    base = [("TEST_RUN", run_id), ("CONTAINER_ID_FULL", CID), ("CONTAINER_ID", CID[:12]), ("PRIORITY", "6")]
    part = [("CONTAINER_PARTIAL_MESSAGE", "true"), ("CONTAINER_PARTIAL_ID", "p1")]
    send_fields([*base, ("MESSAGE", "before")])
    send_fields([*base, *part, ("CONTAINER_PARTIAL_ORDINAL", "1"), ("MESSAGE", "a" * 100)])
    send_fields([*base, ("MESSAGE", "unrelated, between the parts"), ("PRIORITY", "3")])
    wait_until(lambda: seen(journal, f"TEST_RUN={run_id}") == 3, what="3 entries")
    cfg = journal_config(journal, tmp_path, [f"TEST_RUN={run_id}"], partial_timeout=600)
    out = tmp_path / "out.ndjson"
    with BackgroundPipeline(cfg):
        wait_until(lambda: len(read_ndjson(out)) == 2, what="the two complete lines")
        wait_until(
            lambda: checkpoints(tmp_path).exists() and "cursor" in checkpoints(tmp_path).read_text(),
            what="a checkpoint",
        )
        state = checkpoints(tmp_path)
    first = [r["message"] for r in read_ndjson(out)]
    assert sorted(first) == ["before", "unrelated, between the parts"]
    # stopped with the line unfinished: the checkpoint is "before", not past the first part
    cursor = json.loads(state.read_text())["sources"]["journal"]["cursor"]
    exported = subprocess.run(
        ["journalctl", "--directory", str(journal), "-o", "export", f"TEST_RUN={run_id}"],
        capture_output=True,
        check=True,
    ).stdout
    entries = ExportReader(1 << 20).feed(exported)
    assert cursor == entries[0]["__CURSOR"].decode()  # type: ignore[index]
    send_fields([*base, ("CONTAINER_PARTIAL_ID", "p1"), ("CONTAINER_PARTIAL_LAST", "true"), ("MESSAGE", "b" * 50)])
    wait_until(lambda: seen(journal, f"TEST_RUN={run_id}") == 4, what="4 entries")
    assert run_once(cfg) == 0
    recs = read_ndjson(out)[2:]
    assert sorted(r["message"] for r in recs) == ["a" * 100 + "b" * 50, "unrelated, between the parts"]
    joined = next(r for r in recs if r["message"].startswith("a"))
    assert "flags" not in joined["log"] and joined["stream"] == "stdout"


def test_the_system_journal_when_no_directory_is_given(journal, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    send_fields([("TEST_RUN", run_id), ("MESSAGE", "from the system journal")])
    wait_until(lambda: seen(journal, f"TEST_RUN={run_id}") == 1, what="the entry")
    cfg = journal_config(journal, tmp_path, [f"TEST_RUN={run_id}"])
    del cfg["sources"]["journal"]["directory"]
    assert run_once(cfg) == 0
    assert [r["message"] for r in read_ndjson(tmp_path / "out.ndjson")] == ["from the system journal"]


def test_oversize_entries_are_set_aside_with_their_cursor(journal, tmp_path):
    run_id = uuid.uuid4().hex[:8]
    send_fields([("TEST_RUN", run_id), ("MESSAGE", "x" * 20000)])
    send_fields([("TEST_RUN", run_id), ("MESSAGE", "small")])
    wait_until(lambda: seen(journal, f"TEST_RUN={run_id}") == 2, what="2 entries")
    assert run_once(journal_config(journal, tmp_path, [f"TEST_RUN={run_id}"], max_entry_bytes=8192)) == 0
    assert [r["message"] for r in read_ndjson(tmp_path / "out.ndjson")] == ["small"]
    [dl] = read_ndjson(tmp_path / "state" / "dead-letter" / "journal.ndjson")
    assert dl["reason"] == "too_large" and dl["origin"]["cursor"].startswith("s=")


def test_a_missing_directory_fails_the_once_run_with_journalctls_words(tmp_path):
    cfg = journal_config(tmp_path / "nope", tmp_path, [])
    assert run_once(cfg) == 1


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_config(journal_config(tmp_path, tmp_path, ["container_id=x"]))
    assert "FIELD=value" in str(e.value)


def test_a_journalctl_that_ends_on_its_own_keeps_its_exit_code():
    """Stopping a journalctl that has just ended must not reap it behind asyncio's back (it then
    reports 255, "Unknown child process"): measured, one --once run in three failed that way."""
    from collector.sources.journald import _terminate

    async def one() -> int:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo bye; exit 7", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert proc.stdout is not None
        await proc.stdout.read()  # EOF, as when journalctl --no-tail is done
        _terminate(proc)
        return await proc.wait()

    async def many() -> list[int]:
        return [await one() for _ in range(60)]

    assert set(asyncio.run(many())) == {7}
