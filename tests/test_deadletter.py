"""The dead letter's limits: bytes on disk per component (rotation) and bytes per second."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from collector.deadletter import BURST_SECONDS, DeadLetter, DeadLetterConfig
from collector.telemetry import Telemetry


def on_disk(d: Path) -> int:
    return sum(p.stat().st_size for p in (d / "dead-letter").iterdir())


def entries(d: Path) -> list[dict]:
    out = []
    for p in sorted((d / "dead-letter").iterdir()):
        out.extend(orjson.loads(line) for line in p.read_bytes().splitlines())
    return out


def test_never_more_than_max_bytes_on_disk_and_the_oldest_go_first(tmp_path):
    t = Telemetry()
    cfg = DeadLetterConfig(max_bytes=1 << 20, max_bytes_per_second=1 << 30, files=4)
    dl = DeadLetter(tmp_path, t, cfg)
    junk = os.urandom(100_000)
    for i in range(300):
        dl.raw("src", f"bad thing: {i} bytes in", junk, n=i)
        assert on_disk(tmp_path) <= cfg.max_bytes
    dl.close()
    names = sorted(p.name for p in (tmp_path / "dead-letter").iterdir())
    assert names == ["src.ndjson", "src.ndjson.1", "src.ndjson.2", "src.ndjson.3"]
    kept = entries(tmp_path)
    numbers = sorted(e["origin"]["n"] for e in kept)
    assert numbers == list(range(300 - len(kept), 300))  # the newest, without a gap
    assert t.value("collector_dead_letter_dropped_total", component="src", reason="rotated_out") == 300 - len(kept)
    assert t.value("collector_errors_total", component="src", reason="bad thing") == 300  # every one counted
    raw = kept[-1]
    assert raw["raw_truncated_from"] == 100_000  # clipped to fit a file (max_bytes / files / 5)


def test_files_left_by_an_older_version_are_trimmed_at_the_first_write(tmp_path):
    d = tmp_path / "dead-letter"
    d.mkdir()
    (d / "src.ndjson").write_bytes(b'{"old": 1}\n' * 300_000)  # 3.3 MB, from before the cap
    dl = DeadLetter(tmp_path, Telemetry(), DeadLetterConfig(max_bytes=1 << 20, files=2))
    dl.raw("src", "bad", b"x")
    dl.close()
    assert on_disk(tmp_path) <= 1 << 20
    assert entries(tmp_path)[-1]["raw"] == "x"


def test_a_byte_rate_limit_per_component(tmp_path, caplog):
    t = Telemetry()
    cfg = DeadLetterConfig(max_bytes_per_second=10_000)
    dl = DeadLetter(tmp_path, t, cfg)
    caplog.set_level(logging.WARNING, "collector.deadletter")
    for i in range(200):
        dl.raw("fast", "garbage", b"y" * 5000, i=i)
        dl.raw("slow", "garbage", b"z", i=i)
    dl.close()
    written = on_disk(tmp_path)
    burst = cfg.max_bytes_per_second * BURST_SECONDS
    fast = (tmp_path / "dead-letter" / "fast.ndjson").stat().st_size
    assert fast <= burst + 10_000 + 6000  # the burst (and the time the loop took), one entry over
    assert (tmp_path / "dead-letter" / "slow.ndjson").read_bytes().count(b"\n") == 200  # its own budget
    assert written < 200 * 5000
    assert t.value("collector_dead_letter_dropped_total", component="fast", reason="rate_limited") > 150
    assert t.value("collector_errors_total", component="fast", reason="garbage") == 200  # still counted
    lines = [r for r in caplog.records if "fast" in r.getMessage()]
    assert len(lines) <= 2  # one for the reason, one for the rate


@pytest.mark.parametrize("n", [2000])
def test_details_in_reasons_do_not_multiply_log_lines(tmp_path, caplog, n):
    """Row 10 of issue 13: "once per reason" was keyed by details such as byte counts."""
    caplog.set_level(logging.WARNING, "collector.deadletter")
    dl = DeadLetter(tmp_path, Telemetry())
    for i in range(n):
        dl.raw("fwd", f"truncated message: the connection ended {i} bytes into a message", b"x", peer=f"p:{i}")
        dl.raw("fwd", f"not a forward message: an array of {i} items", b"x", peer=f"p:{i}")
    dl.close()
    assert len(caplog.records) <= 4
