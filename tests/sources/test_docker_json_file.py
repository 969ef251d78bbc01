"""The json-file source on real files: restarts, rotation, truncation, bad input.

These use files written in Docker's exact format; tests/e2e/ does the same with a real engine.
"""

from __future__ import annotations

import gzip
import os
import signal
import threading
import time

import orjson
import pytest

from tests.helpers import (
    BackgroundPipeline,
    Collector,
    checkpoint_file,
    docker_line,
    docker_lines,
    file_pipeline,
    free_port,
    metric,
    read_ndjson,
    run_cli,
    run_once,
    split_like_docker,
    wait_until,
)

CID = "ab" * 32


def container_dir(tmp_path):
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True)
    return d


def messages(out):
    return [r["message"] for r in read_ndjson(out)]


def test_once_twice_delivers_nothing_new_and_appended_lines_exactly_once(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines([f"line {i}" for i in range(100)]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    assert run_once(cfg) == 0
    assert messages(out) == [f"line {i}" for i in range(100)]
    assert run_once(cfg) == 0
    assert len(messages(out)) == 100
    with open(log, "ab") as f:
        f.write(docker_lines([f"more {i}" for i in range(5)], start_ns=500))
    assert run_once(cfg) == 0
    assert messages(out) == [f"line {i}" for i in range(100)] + [f"more {i}" for i in range(5)]
    recs = read_ndjson(out)
    assert recs[0]["container"] == {"id": CID}
    assert recs[0]["log"]["file"]["path"] == str(log)
    assert recs[1]["log"]["offset"] == len(docker_line("line 0\n", t="2024-05-01T12:00:00.000000001Z"))


def test_record_shape_is_nested_ecs(tmp_path, data_dir):
    d = container_dir(tmp_path)
    (d / f"{CID}-json.log").write_bytes(docker_line("hi\n", "stderr", "2024-05-01T12:00:00.123456789Z"))
    out = tmp_path / "out.ndjson"
    run_once(file_pipeline([str(d / "*-json.log")], out, data_dir, tags=["t1"]))
    (rec,) = read_ndjson(out)
    assert rec["@timestamp"] == "2024-05-01T12:00:00.123456789Z"  # nanoseconds kept
    assert rec["message"] == "hi" and rec["stream"] == "stderr"
    assert rec["host"]["name"] and rec["tags"] == ["t1"]
    assert not any("." in k for k in rec)  # nested objects, never dotted keys


def test_malformed_lines_go_to_the_dead_letter_with_path_and_offset(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    good = docker_line("good 1\n")
    bad = b'{"log":"half a line\n'
    log.write_bytes(good + bad + docker_line("good 2\n"))
    out = tmp_path / "out.ndjson"
    assert run_once(file_pipeline([str(log)], out, data_dir)) == 0
    assert messages(out) == ["good 1", "good 2"]
    (dl,) = read_ndjson(data_dir / "dead-letter" / "files.ndjson")
    assert dl["origin"] == {"path": str(log), "offset": len(good)}
    assert dl["raw"] == bad[:-1].decode() and dl["reason"].startswith("bad JSON")


def test_a_torn_last_line_waits_for_its_end(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    whole = docker_line("first\n")
    second = docker_line("second\n")
    log.write_bytes(whole + second[:15])
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir)
    run_once(cfg)
    assert messages(out) == ["first"]
    with open(log, "ab") as f:
        f.write(second[15:])
    run_once(cfg)
    assert messages(out) == ["first", "second"]
    assert not (data_dir / "dead-letter" / "files.ndjson").exists()


def test_long_lines_split_by_docker_arrive_whole(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    long = "L" * 40000
    log.write_bytes(docker_line("a\n") + split_like_docker(long) + docker_line("b\n"))
    out = tmp_path / "out.ndjson"
    run_once(file_pipeline([str(log)], out, data_dir))
    assert messages(out) == ["a", long, "b"]


def test_a_split_line_interrupted_by_a_restart_is_rejoined_whole(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    parts = split_like_docker("P" * 40000).splitlines(keepends=True)
    log.write_bytes(docker_line("a\n") + parts[0])
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir)
    run_once(cfg)
    assert messages(out) == ["a"]
    with open(log, "ab") as f:
        f.write(b"".join(parts[1:]))
    run_once(cfg)
    assert messages(out) == ["a", "P" * 40000]


def rotate(log, n_max=5, compress=False):
    """Docker's json-file rotation; with ``compress`` as ``compress=true`` does it: the rotated
    files are x.N.gz, and the new x.1 is gzip'ed to x.1.gz, then removed."""
    ext = ".gz" if compress else ""
    for i in range(n_max - 1, 0, -1):
        src = f"{log}.{i}{ext}"
        if os.path.exists(src):
            os.replace(src, f"{log}.{i + 1}{ext}")
    os.replace(log, f"{log}.1")
    if compress:
        with open(f"{log}.1", "rb") as src, gzip.open(f"{log}.1.gz", "wb") as dst:
            dst.write(src.read())
        os.remove(f"{log}.1")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compress=true"])
def test_rotation_while_stopped_reads_every_file_once_in_order(tmp_path, data_dir, compress):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines([f"gen0 {i}" for i in range(10)]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    run_once(cfg)
    # while the collector is down: the file half read gets more lines, two rotations (one file we
    # never saw); compressed, both are read from x.N.gz, the first from its checkpoint
    with open(log, "ab") as f:
        f.write(docker_lines([f"gen0 {i}" for i in range(10, 15)], start_ns=100))
    rotate(log, compress=compress)
    log.write_bytes(docker_lines([f"gen1 {i}" for i in range(10)], start_ns=200))
    rotate(log, compress=compress)
    log.write_bytes(docker_lines([f"gen2 {i}" for i in range(3)], start_ns=300))
    run_once(cfg)
    expected = [f"gen0 {i}" for i in range(15)] + [f"gen1 {i}" for i in range(10)] + [f"gen2 {i}" for i in range(3)]
    assert messages(out) == expected
    run_once(cfg)
    assert messages(out) == expected


def test_history_skipped_at_first_sight_stays_skipped_after_a_restart(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["history"]))
    rotate(log)
    log.write_bytes(docker_lines(["live 0"], start_ns=10))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    run_once(cfg)
    assert messages(out) == ["live 0"]  # a rotated file there before us is history (include_rotated)
    with open(log, "ab") as f:
        f.write(docker_lines(["live 1"], start_ns=20))
    rotate(log)
    log.write_bytes(docker_lines(["next 0"], start_ns=30))
    run_once(cfg)
    assert messages(out) == ["live 0", "live 1", "next 0"]


def test_compressed_rotation_while_following_loses_nothing_and_raises_no_alarm(tmp_path, data_dir, caplog):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["a0"]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir)
    caplog.set_level("WARNING")
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: messages(out) == ["a0"], what="first line")
        with open(log, "ab") as f:
            f.write(docker_lines(["a1"], start_ns=10))
        rotate(log, compress=True)  # compressed before we look: our file is now x.1.gz
        log.write_bytes(docker_lines(["b0", "b1"], start_ns=20))
        rotate(log, compress=True)
        log.write_bytes(docker_lines(["c0"], start_ns=30))
        wait_until(lambda: messages(out)[-1:] == ["c0"], what="the newest file")
        assert bg.stop() == 0
        assert bg.telemetry.value("collector_errors_total", reason="rotation_outpaced") == 0
    assert messages(out) == ["a0", "a1", "b0", "b1", "c0"]
    assert not [r for r in caplog.records if "LOST" in r.getMessage()]


@pytest.mark.parametrize("live_missing", [False, True], ids=["live-there", "live-missing"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compress=true"])
def test_a_rotation_between_the_look_and_the_open_of_the_new_file(
    tmp_path, data_dir, monkeypatch, compress, live_missing
):
    """The writer does not wait for us: the file after ours is written and rotated away between
    our look at the rotated files and our open of the live one (seen under load: its lines were
    lost, silently). Made certain by rotating inside that gap."""
    from collector.sources.docker_json_file.harvester import Harvester

    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["a0"]))
    out = tmp_path / "out.ndjson"
    look = Harvester._catch_up_rotations
    gaps = []

    def look_then_rotate(self, s, finished, opened=None):
        look(self, s, finished, opened)
        if opened is None and not gaps:  # the first look after our file was renamed
            gaps.append(1)
            log.write_bytes(docker_lines(["b0", "b1"], start_ns=20))
            if not live_missing:
                rotate(log, compress=compress)
                log.write_bytes(docker_lines(["c0"], start_ns=30))
                return
            # Docker's rotation in two halves: renamed (the live file not there yet when we look
            # for it), then compressed and the new file created
            ext = ".gz" if compress else ""
            for i in range(4, 0, -1):
                if os.path.exists(f"{log}.{i}{ext}"):
                    os.replace(f"{log}.{i}{ext}", f"{log}.{i + 1}{ext}")
            os.replace(log, f"{log}.1")

            def rest() -> None:
                if compress:
                    with open(f"{log}.1", "rb") as src, gzip.open(f"{log}.1.gz", "wb") as dst:
                        dst.write(src.read())
                    os.remove(f"{log}.1")
                log.write_bytes(docker_lines(["c0"], start_ns=30))

            threading.Timer(0.5, rest).start()

    monkeypatch.setattr(Harvester, "_catch_up_rotations", look_then_rotate)
    with BackgroundPipeline(file_pipeline([str(log)], out, data_dir)) as bg:
        wait_until(lambda: messages(out) == ["a0"], what="first line")
        with open(log, "ab") as f:
            f.write(docker_lines(["a1"], start_ns=10))
        rotate(log, compress=compress)
        wait_until(lambda: "c0" in messages(out), what=f"the newest file: {messages(out)}")
        assert bg.stop() == 0
    assert gaps and messages(out) == ["a0", "a1", "b0", "b1", "c0"]


def test_files_deleted_before_they_were_read_are_reported_as_lost(tmp_path, data_dir, caplog):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines([f"x {i}" for i in range(10)]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir)
    run_once(cfg)
    # as after a kill -9 with the last records not yet acknowledged: the checkpoint lags
    cp_path = checkpoint_file(data_dir)
    cp = orjson.loads(cp_path.read_bytes())
    (entry,) = cp["sources"]["files"].values()
    size = entry["size"]
    entry["offset"] = 100
    cp_path.write_bytes(orjson.dumps(cp))
    os.remove(log)  # rotated away and deleted while the collector was down
    log.write_bytes(docker_lines(["new file"], start_ns=950))
    caplog.set_level("ERROR")
    run_once(cfg)
    assert messages(out)[-1] == "new file"
    lost = [r.getMessage() for r in caplog.records if "LOST DATA" in r.getMessage()]
    assert lost and f"bytes 100-{size} ({size - 100} bytes" in lost[0]
    assert CID[:12] in lost[0]


def test_follow_mode_survives_rotation_and_copytruncate(tmp_path, data_dir):
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["start"]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: messages(out) == ["start"], what="first line")
        with open(log, "ab") as f:
            f.write(docker_lines(["before rotation"], start_ns=10))
        rotate(log)
        log.write_bytes(docker_lines(["after rotation"], start_ns=20))
        wait_until(lambda: len(messages(out)) == 3, what="rotation handled")
        # copytruncate: the same inode is emptied and written again
        with open(log, "r+b") as f:
            f.truncate(0)
        with open(log, "ab") as f:
            f.write(docker_lines(["after truncation"], start_ns=30))
        wait_until(lambda: len(messages(out)) == 4, what="truncation handled")
        assert bg.stop() == 0
        assert bg.telemetry.value("collector_errors_total", reason="truncated") == 1
    assert messages(out) == ["start", "before rotation", "after rotation", "after truncation"]


def test_rotation_faster_than_we_read_is_reported_and_counted(tmp_path, data_dir):
    """Docker with max-file=2 rotating three times before we look: the middle file is deleted
    unread. The collector is frozen (SIGSTOP) meanwhile, so it cannot look between two renames:
    the loss is certain, and must be said (POSSIBLY LOST DATA) and counted (rotation_outpaced)."""
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["a0"]))
    out = tmp_path / "out.ndjson"
    api = f"127.0.0.1:{free_port()}"
    cfg = {**file_pipeline([str(log)], out, data_dir), "api": {"listen": f"tcp://{api}"}}
    (tmp_path / "p.yaml").write_bytes(orjson.dumps(cfg))  # JSON is YAML
    with Collector("run", "-c", str(tmp_path / "p.yaml")).start(tmp_path / "collector.log") as col:
        wait_until(lambda: messages(out) == ["a0"], what="first line")
        os.kill(col.proc.pid, signal.SIGSTOP)
        try:
            with open(log, "ab") as f:  # the last words of A, written just before its rotation
                f.write(docker_lines(["a1"], start_ns=10))
            for gen, ns in (("b", 20), ("c", 30)):
                os.replace(log, f"{log}.1")  # max-file=2: the previous .1 is deleted by the rename
                log.write_bytes(docker_lines([f"{gen}0", f"{gen}1"], start_ns=ns))
            os.replace(log, f"{log}.1")
            log.write_bytes(docker_lines(["d0"], start_ns=40))
        finally:
            os.kill(col.proc.pid, signal.SIGCONT)
        wait_until(lambda: messages(out)[-1:] == ["d0"], what="the newest file")
        outpaced = metric(api, "collector_errors_total", reason="rotation_outpaced")
        assert col.stop() == 0, col.stderr()
    assert messages(out) == ["a0", "a1", "c0", "c1", "d0"]  # b0 and b1 were in the file deleted unread
    assert outpaced == 1
    (warning,) = [x for x in col.stderr().splitlines() if "POSSIBLY LOST DATA" in x]
    assert "rotated faster than we read it" in warning and f"{log}.1" in warning


def test_new_containers_are_found_by_watching_not_by_the_rescan(tmp_path, data_dir, caplog):
    """A container that appears after the start is found by the directory watch (within a
    second when the machine is idle), not by the periodic rescan: here the rescan is an hour
    away, so only the watch can find it."""
    (tmp_path / "containers").mkdir()
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir, rescan_interval=3600)
    caplog.set_level("WARNING")
    with BackgroundPipeline(cfg) as bg:
        # the first scan found nothing (said once): the watch is in place from before it
        wait_until(lambda: "waiting for containers" in caplog.text, what="the first scan")
        cid = "cd" * 32
        nd = tmp_path / "containers" / cid
        nd.mkdir()
        (nd / f"{cid}-json.log").write_bytes(docker_lines(["hello from a new container"]))
        wait_until(lambda: messages(out), timeout=60, what="the new container's line")
        assert bg.stop() == 0
    assert read_ndjson(out)[0]["container"]["id"] == cid


def test_a_container_that_rotated_before_we_saw_it_is_read_from_its_first_file(tmp_path, data_dir, caplog):
    (tmp_path / "containers").mkdir()
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    caplog.set_level("WARNING")
    with BackgroundPipeline(cfg) as bg:
        # after the first scan (what is there at start is history: its rotated files are not read)
        wait_until(lambda: "waiting for containers" in caplog.text, what="the first scan")
        cid = "cd" * 32
        (tmp_path / "staging").mkdir()  # outside the glob: it must not be seen half made
        log = tmp_path / "staging" / f"{cid}-json.log"
        for gen in range(3):  # a busy container: two rotations before the collector looks
            if gen:
                rotate(log)
            log.write_bytes(docker_lines([f"gen{gen} {i}" for i in range(3)], start_ns=gen * 10))
        os.rename(log.parent, tmp_path / "containers" / cid)  # appears at once, already rotated
        wait_until(lambda: len(messages(out)) == 9, timeout=60)
        assert bg.stop() == 0
    assert messages(out) == [f"gen{g} {i}" for g in range(3) for i in range(3)]


def test_checkpoint_only_covers_delivered_records(tmp_path, data_dir):
    """Lines read but not delivered (the sink is blocked writing to a pipe nobody reads) are
    not in the checkpoint written at the stop: the next run delivers them, once."""
    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines([f"l{i}" for i in range(10)]))
    delivered_size = log.stat().st_size
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    cfg = {**file_pipeline([str(log)], fifo, data_dir), "shutdown_timeout": 1}
    got = bytearray()
    try:
        with BackgroundPipeline(cfg) as bg:
            wait_until(lambda: _read_pipe(rfd, got).count(b"\n") == 10, what="the first 10 records")
            wait_until(lambda: _offset(data_dir) == delivered_size, what="the checkpoint over them")
            with open(log, "ab") as f:  # 3 x 100 KB: more than a pipe holds, and nobody reads
                f.write(docker_lines([f"big{i} " + "x" * 100_000 for i in range(3)], start_ns=100))
            wait_until(lambda: bg.telemetry.value("collector_events_received_total") == 13, what="all 13 read")
            assert bg.stop() == 3  # stopped with records undelivered
        assert _offset(data_dir) == delivered_size  # read, not delivered: not in the checkpoint
        # in-process, the stopped sink's thread is still inside write(2) (a real process is gone):
        # let it finish what it was writing, and set that aside
        stale = bytearray()
        wait_until(lambda: _read_pipe(rfd, stale).endswith(b"\n"), what="the stopped sink's last write(2)")
        time.sleep(1)  # (nothing observable says that thread has returned: a second look after a pause)
        assert _read_pipe(rfd, stale).endswith(b"\n")
        got.clear()
        with BackgroundPipeline(cfg) as bg:
            wait_until(lambda: _read_pipe(rfd, got).count(b"\n") >= 3, what="the 3 undelivered records")
            wait_until(
                lambda: _read_pipe(rfd, got) is not None and _offset(data_dir) == log.stat().st_size,
                what="the checkpoint at the end",
            )
            assert bg.stop() == 0
    finally:
        os.close(rfd)
    assert [orjson.loads(x)["message"][:4] for x in bytes(got).splitlines()] == ["big0", "big1", "big2"]


def _read_pipe(fd: int, into: bytearray) -> bytearray:
    """What a non-blocking pipe holds now, added to ``into``."""
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return into
        if not data:
            return into
        into.extend(data)


def _offset(data_dir) -> int:
    try:
        cp = orjson.loads(checkpoint_file(data_dir).read_bytes())["sources"]["files"]
    except (AssertionError, OSError, ValueError):
        return -1
    return sum(v["offset"] for v in cp.values())


def copytruncate(log):
    """What logrotate's copytruncate does: shift the old copies, copy, empty the file in place."""
    import shutil

    for i in range(8, 0, -1):
        if os.path.exists(f"{log}.{i}"):
            os.replace(f"{log}.{i}", f"{log}.{i + 1}")
    shutil.copyfile(log, f"{log}.1")
    with open(log, "r+b") as f:
        f.truncate(0)


def test_copytruncate_while_stopped_reads_the_rest_from_the_copy(tmp_path, data_dir):
    plain = tmp_path / "plain"
    plain.mkdir()
    log = plain / "app.log"
    log.write_bytes(docker_lines([f"a{i}" for i in range(10)]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(plain / "*.log")], out, data_dir)
    run_once(cfg)
    with open(log, "ab") as f:
        f.write(docker_lines([f"unread{i}" for i in range(5)], start_ns=100))
    copytruncate(log)
    with open(log, "ab") as f:
        f.write(docker_lines([f"new{i}" for i in range(3)], start_ns=200))
    run_once(cfg)
    assert messages(out) == [f"a{i}" for i in range(10)] + [f"unread{i}" for i in range(5)] + [
        f"new{i}" for i in range(3)
    ]


def test_copytruncate_while_following_loses_and_repeats_nothing(tmp_path, data_dir):
    plain = tmp_path / "plain"
    plain.mkdir()
    log = plain / "app.log"
    log.write_bytes(docker_lines(["first"]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(plain / "*.log")], out, data_dir)
    expected = ["first"]
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: messages(out) == ["first"])
        n = 1000
        for rnd in range(5):
            chunk = [f"r{rnd} {i}" for i in range(20)]
            with open(log, "ab") as f:
                f.write(docker_lines(chunk, start_ns=n))
            n += 100
            expected += chunk
            copytruncate(log)  # right after writing: usually before the collector saw the lines
            time.sleep(0.3)  # (the scenario: logrotate runs again a little later)
        wait_until(lambda: len(messages(out)) >= len(expected), timeout=20)
        assert bg.stop() == 0
    assert messages(out) == expected


def test_a_wall_clock_step_changes_no_timestamp_and_no_decision(tmp_path, data_dir, monkeypatch):
    """The wall clock (an injected time.time) is an hour fast at start, then stepped back (NTP).
    Records keep Docker's timestamps, checkpoints keep being saved on the monotonic clock, and a
    container born after the step still has its rotated files read (they were taken for history
    from before the start, and skipped: lost)."""
    real = time.time
    ahead = [3600.0]
    monkeypatch.setattr(time, "time", lambda: real() + ahead[0])
    out = tmp_path / "out.ndjson"
    (tmp_path / "containers").mkdir()
    cfg = file_pipeline([str(tmp_path / "containers/*/*-json.log")], out, data_dir)
    cfg["checkpoint_interval"] = 0.1
    with BackgroundPipeline(cfg) as bg:
        store = bg.pipeline.ctx.checkpoints
        ahead[0] = 0.0  # stepped back by an hour
        d = container_dir(tmp_path)
        log = d / f"{CID}-json.log"
        log.write_bytes(docker_lines(["first 0", "first 1"], start_ns=1))
        rotated_size = log.stat().st_size
        rotate(log)  # rotated before we saw it: its first lines
        log.write_bytes(docker_lines(["live 0"], start_ns=10))
        saves = store.saves
        wait_until(lambda: messages(out) == ["first 0", "first 1", "live 0"], what=f"the rotated file: {messages(out)}")
        # saved on the monotonic clock after the step: both files' ends in the checkpoint file
        # (the file is replaced before the saving thread counts the save: wait for both)
        wait_until(
            lambda: _offset(data_dir) == rotated_size + log.stat().st_size and store.saves > saves,
            what="the checkpoint saved",
        )
        assert bg.stop() == 0
    stamps = [r["@timestamp"] for r in read_ndjson(out)]
    assert stamps == [
        "2024-05-01T12:00:00.000000001Z",
        "2024-05-01T12:00:00.000000002Z",
        "2024-05-01T12:00:00.000000010Z",
    ]


def test_copytruncate_past_the_last_copy_is_reported(tmp_path, data_dir):
    """A collector stopped while the file is copied and truncated more times than copies are kept:
    what was only in the copies that are gone is lost, said with the file and the byte range, and
    everything still on disk is delivered once."""
    plain = tmp_path / "plain"
    plain.mkdir()
    log = plain / "app.log"
    log.write_bytes(docker_lines([f"a{i}" for i in range(10)]))
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(plain / "*.log")], out, data_dir)
    assert run_once(cfg) == 0
    for rnd in range(3):  # three copytruncates, and logrotate keeps one copy (`rotate 1`)
        with open(log, "ab") as f:
            f.write(docker_lines([f"r{rnd} {i}" for i in range(5)], start_ns=100 * (rnd + 1)))
        copytruncate(log)
        for old in plain.glob("app.log.[2-9]"):
            old.unlink()
    with open(log, "ab") as f:
        f.write(docker_lines(["live"], start_ns=900))
    (tmp_path / "p.yaml").write_bytes(orjson.dumps(cfg))  # JSON is YAML
    r = run_cli("run", "-c", str(tmp_path / "p.yaml"), "--once")
    assert r.returncode == 0, r.stderr
    # the copy left (.1) holds round 2; rounds 0 and 1 were in copies logrotate deleted
    assert messages(out) == [f"a{i}" for i in range(10)] + [f"r2 {i}" for i in range(5)] + ["live"]
    said = [x for x in r.stderr.splitlines() if "WARNING" in x or "ERROR" in x]
    assert any("app.log" in x and "lost" in x.lower() for x in said), r.stderr


@pytest.mark.parametrize("then", ["renamed", "deleted"])
def test_a_rotated_file_gone_between_the_listing_and_the_open(tmp_path, caplog, then):
    """A rotated file we never read is listed, then renamed by the next rotation (read it by its
    new name) or deleted (said and counted: it was skipped without a word)."""
    from collector.checkpoints import CheckpointStore
    from collector.component import Context
    from collector.deadletter import DeadLetter
    from collector.sources.docker_json_file import DockerJsonFileConfig, DockerJsonFileSource
    from collector.sources.docker_json_file.harvester import LogStream
    from collector.telemetry import Telemetry

    d = container_dir(tmp_path)
    log = d / f"{CID}-json.log"
    log.write_bytes(docker_lines(["c0"], start_ns=30))
    rotated = d / f"{CID}-json.log.1"
    rotated.write_bytes(docker_lines(["b0"], start_ns=20))
    t = Telemetry()
    ctx = Context(tmp_path / "state", t, CheckpointStore(tmp_path / "state"), DeadLetter(tmp_path / "state", t))
    cfg = DockerJsonFileConfig.model_validate({"type": "docker_json_file", "paths": [str(log)]})
    src = DockerJsonFileSource("files", cfg, ctx)
    src.discovery.roots[str(log)] = str(tmp_path)
    fp = src.discovery.fp_of(str(rotated), str(log))
    assert fp is not None
    if then == "renamed":
        os.replace(rotated, d / f"{CID}-json.log.2")
    else:
        os.remove(rotated)
    s = LogStream(str(log), None, "t")
    caplog.set_level("INFO")
    src.harvester._queue_unseen(s, str(rotated), fp)
    lost = [r.getMessage() for r in caplog.records if "LOST DATA" in r.getMessage()]
    if then == "renamed":
        assert [of.path for of in s.queue] == [str(d / f"{CID}-json.log.2")] and not lost
    else:
        assert not s.queue and len(lost) == 1 and str(rotated) in lost[0]
        assert t.errors.labels("files", "file_vanished_unread")._value.get() == 1
    for of in s.queue:
        of.close()
