"""The file source with ``format: cri`` on real files written as containerd/CRI-O write them,
in kubelet's layout, rotated as kubelet rotates them. tests/e2e/test_cri_tail.py runs the real
collector process into a real Elasticsearch through rotation under write and kill -9."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from tests.helpers import (
    BackgroundPipeline,
    cri_line,
    cri_lines,
    file_pipeline,
    read_ndjson,
    run_once,
    split_like_cri,
    wait_until,
)

UID = "0a1b2c3d-1111-2222-3333-444455556666"


def pod_dir(tmp_path: Path, ns: str = "shop", pod: str = "web-7d4f9-x2x8k", container: str = "nginx") -> Path:
    d = tmp_path / "pods" / f"{ns}_{pod}_{UID}" / container
    d.mkdir(parents=True)
    return d


def cri_pipeline(tmp_path: Path, out: Path, data_dir: Path, **source: object) -> dict[str, object]:
    return file_pipeline([str(tmp_path / "pods" / "*" / "*" / "*.log")], out, data_dir, format="cri", **source)


def messages(out: Path) -> list[str]:
    return [r["message"] for r in read_ndjson(out)]


def kubelet_rotate(log: Path, stamp: str, compress_previous: bool = True) -> Path:
    """What kubelet's container log manager does: gzip the rotated files not yet compressed
    (through ``.tmp``), then rename the live file to ``<log>.<YYYYMMDD-HHMMSS>``; the runtime
    then creates a new live file (the caller writes it)."""
    if compress_previous:
        for p in sorted(log.parent.glob(log.name + ".*")):
            if p.suffix in (".gz", ".tmp"):
                continue
            tmp = Path(f"{p}.tmp")
            with open(p, "rb") as src, gzip.open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, f"{p}.gz")
            os.remove(p)
    rotated = Path(f"{log}.{stamp}")
    os.replace(log, rotated)
    return rotated


def test_records_have_json_files_shape_and_the_pod_from_the_path(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    log = d / "2.log"
    log.write_bytes(cri_line("hello", "stderr", "2024-05-01T12:00:00.123456789Z"))
    out = tmp_path / "out.ndjson"
    assert run_once(cri_pipeline(tmp_path, out, data_dir, tags=["k8s"])) == 0
    (rec,) = read_ndjson(out)
    assert rec["@timestamp"] == "2024-05-01T12:00:00.123456789Z"
    assert rec["message"] == "hello" and rec["stream"] == "stderr"
    assert rec["log"] == {"offset": 0, "file": {"path": str(log)}}
    assert rec["kubernetes"] == {
        "namespace": "shop",
        "pod": {"name": "web-7d4f9-x2x8k", "uid": UID},
        "container": {"name": "nginx", "restart_count": 2},
    }
    assert rec["container"] == {"name": "nginx"} and rec["tags"] == ["k8s"] and rec["host"]["name"]


def test_long_lines_split_by_the_runtime_arrive_whole_and_appended_lines_once(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    log = d / "0.log"
    long = "L" * 40000
    log.write_bytes(cri_line("a") + split_like_cri(long) + cri_line("b", t="2024-05-01T12:00:02Z"))
    out = tmp_path / "out.ndjson"
    cfg = cri_pipeline(tmp_path, out, data_dir)
    run_once(cfg)
    assert messages(out) == ["a", long, "b"]
    run_once(cfg)
    assert messages(out) == ["a", long, "b"]
    with open(log, "ab") as f:
        f.write(cri_lines(["c", "d"], start_ns=500))
    run_once(cfg)
    assert messages(out) == ["a", long, "b", "c", "d"]


def test_a_partial_line_interrupted_by_a_restart_is_delivered_once_whole(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    log = d / "0.log"
    parts = split_like_cri("P" * 40000).splitlines(keepends=True)
    log.write_bytes(cri_line("a") + parts[0])
    out = tmp_path / "out.ndjson"
    cfg = cri_pipeline(tmp_path, out, data_dir)
    run_once(cfg)
    assert messages(out) == ["a"]  # the P part is held back: the checkpoint stays before it
    with open(log, "ab") as f:
        f.write(b"".join(parts[1:]))
    run_once(cfg)
    assert messages(out) == ["a", "P" * 40000]


def test_a_joined_line_over_the_record_limit_is_cut_and_flagged(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    (d / "0.log").write_bytes(split_like_cri("Z" * 5000, size=1000) + cri_line("next", t="2024-05-01T12:00:03Z"))
    out = tmp_path / "out.ndjson"
    run_once(cri_pipeline(tmp_path, out, data_dir, max_record_bytes=2048))
    first, second = read_ndjson(out)
    assert first["message"] == "Z" * 2048 and first["log"]["flags"] == ["truncated"]
    assert second["message"] == "next"


def test_malformed_lines_are_dead_lettered_with_path_offset_and_counted(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    log = d / "0.log"
    good = cri_line("good 1")
    bad = b"2024-05-01T12:00:00Z stdout Q what tag\n"
    log.write_bytes(good + bad + cri_line("good 2"))
    out = tmp_path / "out.ndjson"
    with BackgroundPipeline(cri_pipeline(tmp_path, out, data_dir)) as bg:
        wait_until(lambda: messages(out) == ["good 1", "good 2"], what="the good lines")
        assert bg.telemetry.value("collector_errors_total", reason="not a CRI log line") == 1
        assert bg.stop() == 0
    (dl,) = read_ndjson(data_dir / "dead-letter" / "files.ndjson")
    assert dl["origin"] == {"path": str(log), "offset": len(good)}
    assert dl["raw"] == bad[:-1].decode() and "tag is neither P nor F" in dl["reason"]


def test_kubelet_rotation_while_stopped_reads_every_file_once_in_order(tmp_path, data_dir):
    d = pod_dir(tmp_path)
    log = d / "0.log"
    log.write_bytes(cri_lines([f"gen0 {i}" for i in range(10)]))
    out = tmp_path / "out.ndjson"
    cfg = cri_pipeline(tmp_path, out, data_dir)
    run_once(cfg)
    # while the collector is down: more lines in the half-read file, two rotations (the first
    # rotated file is gzip'ed by the second one, and is read from its checkpoint inside the .gz)
    with open(log, "ab") as f:
        f.write(cri_lines([f"gen0 {i}" for i in range(10, 15)], start_ns=100))
    kubelet_rotate(log, "20240501-120010")
    log.write_bytes(cri_lines([f"gen1 {i}" for i in range(10)], start_ns=200))
    kubelet_rotate(log, "20240501-120020")
    log.write_bytes(cri_lines([f"gen2 {i}" for i in range(3)], start_ns=300))
    assert sorted(p.name for p in d.iterdir()) == ["0.log", "0.log.20240501-120010.gz", "0.log.20240501-120020"]
    run_once(cfg)
    expected = [f"gen0 {i}" for i in range(15)] + [f"gen1 {i}" for i in range(10)] + [f"gen2 {i}" for i in range(3)]
    assert messages(out) == expected
    kubelet_rotate(log, "20240501-120030")  # both older files now .gz: nothing is new
    log.write_bytes(cri_lines(["gen3 0"], start_ns=400))
    run_once(cfg)
    assert messages(out) == [*expected, "gen3 0"]


def test_a_renamed_file_written_after_its_rename_loses_nothing(tmp_path, data_dir):
    """containerd keeps writing to the renamed file until kubelet's reopen call reaches it: those
    last lines are read (for ``rotation_grace`` after its last line) while the new file is read."""
    d = pod_dir(tmp_path)
    log = d / "0.log"
    log.write_bytes(cri_lines(["a0"]))
    out = tmp_path / "out.ndjson"
    with BackgroundPipeline(cri_pipeline(tmp_path, out, data_dir, rotation_grace=120.0)) as bg:
        wait_until(lambda: messages(out) == ["a0"], what="first line")
        with open(log, "ab") as old:
            kubelet_rotate(log, "20240501-120000")
            log.write_bytes(cri_lines(["b0"], start_ns=20))  # the runtime's new file
            # delivered from the new file: the collector has seen the rename
            wait_until(lambda: messages(out) == ["a0", "b0"], what="the new file's line")
            old.write(cri_lines(["a1 written after the rename"], start_ns=10))  # the old writer's last line
        wait_until(lambda: len(messages(out)) == 3, what="the renamed file's last line")
        assert bg.stop() == 0
    assert messages(out) == ["a0", "b0", "a1 written after the rename"]
