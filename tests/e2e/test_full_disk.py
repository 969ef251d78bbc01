"""A full disk under the data directory never stops good records (issue 14).

Measured before: with the data directory on a full filesystem, `tail --once` logged `source
'containers' failed; its input is no longer read`, delivered 5,286 of 6,002 good lines and ended
with an `OSError: [Errno 28]` traceback (here, filled to the last byte before it starts: 0).
"""

from __future__ import annotations

from collections import Counter

import orjson

from tests.helpers import Collector, checkpoint_file, read_ndjson, run_cli, wait_until

GOOD = 6_002


def write_containers(root, containers: int = 6) -> int:
    """Docker's layout: ``GOOD`` good lines over ``containers`` containers, a corrupt line (~3 KB,
    for the dead letter) after every 15th; returns the number of corrupt lines."""
    corrupt = 0
    for c in range(containers):
        cid = f"{c:02d}" * 32
        d = root / "containers" / cid
        d.mkdir(parents=True)
        config = {"ID": cid, "Name": f"/app-{c}", "Config": {"Image": "app:1", "Labels": {}}}
        (d / "config.v2.json").write_bytes(orjson.dumps(config))
        lines = []
        for i in range(GOOD // containers + (GOOD % containers if c == 0 else 0)):
            t = f"2024-05-01T12:00:{i // 1000:02d}.{i % 1000:03d}000000Z"
            lines.append(orjson.dumps({"log": f"good {c} {i}\n", "stream": "stdout", "time": t}))
            if i % 15 == 7:
                lines.append(b'{"log": "corrupt ' + b"x" * 3000)
                corrupt += 1
        (d / f"{cid}-json.log").write_bytes(b"\n".join(lines) + b"\n")
    return corrupt


def test_tail_once_on_a_full_data_dir_delivers_every_good_line(tmp_path, small_disk):
    root = tmp_path / "docker"
    corrupt = write_containers(root)
    out = tmp_path / "out.ndjson"
    state = small_disk.path / "state"
    small_disk.fill()
    args = ("tail", "--docker-root", str(root), "--data-dir", str(state), "--output", f"file:{out}")
    col = Collector(*args, "--metadata", "files", "--once").start(tmp_path / "err.log")
    with col:
        # every good line arrives while the disk is full; dead letters and checkpoints cannot be written
        wait_until(lambda: len(read_ndjson(out)) == GOOD, timeout=120, what="every good line")
        wait_until(lambda: "DISK FULL: cannot write checkpoints" in col.stderr(), what="the checkpoint warning")
        assert col.proc.poll() is None  # waiting (up to shutdown_timeout) to save its place
        small_disk.free()
        rc = col.proc.wait(120)
    err = col.stderr()
    assert rc == 0, err
    assert "Traceback" not in err and "failed" not in err
    assert err.count("DISK FULL: cannot write dead letters") == 1  # loud, once, not once per line
    assert "disk space is back: writing checkpoints again" in err
    # counted as bad input, and as not set aside
    assert f"{corrupt} dead-lettered ({corrupt} errors, dead letters not kept: {corrupt} disk full" in err
    got = Counter(d["message"] for d in read_ndjson(out))
    assert len(got) == GOOD and set(got.values()) == {1}
    # the place was saved once space came back: a second run delivers nothing again
    r = run_cli(*args, "--metadata", "files", "--once")
    assert r.returncode == 0, r.stderr
    assert len(read_ndjson(out)) == GOOD


def _pipeline(tmp_path, state, **extra):
    return {
        "data_dir": str(state),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "logs" / "*-json.log")]}},
        "sinks": {"out": {"type": "file", "inputs": ["files"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
        "checkpoint_interval": 0.1,
        **extra,
    }


def _append(log, first: int, n: int, corrupt: int = 0) -> None:
    with open(log, "ab") as f:
        for i in range(first, first + n):
            f.write(orjson.dumps({"log": f"m{i}\n", "stream": "stdout", "time": "2024-05-01T12:00:00Z"}) + b"\n")
        f.write(b'{"log": "corrupt\n' * corrupt)


def _offset(state) -> int:
    doc = orjson.loads(checkpoint_file(state).read_bytes())  # always a whole, valid document
    return sum(int(v["offset"]) for v in doc["sources"]["files"].values())


def test_following_through_a_full_disk_resumes_by_itself(tmp_path, small_disk, caplog):
    """Good records flow while the disk is full; the checkpoint file keeps its last valid state
    and catches up when space comes back; dead letters are counted meanwhile, written after."""
    from tests.helpers import BackgroundPipeline

    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app-json.log"
    state = small_disk.path / "state"
    caplog.set_level("INFO")
    with BackgroundPipeline(_pipeline(tmp_path, state)) as bg:
        _append(log, 0, 100)
        wait_until(lambda: list(state.glob("checkpoints/*.json")) and _offset(state) == log.stat().st_size)
        before = _offset(state)
        small_disk.fill()
        _append(log, 100, 100, corrupt=10)
        wait_until(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 200, what="records while the disk is full")
        wait_until(lambda: "DISK FULL: cannot write checkpoints" in caplog.text)
        assert _offset(state) == before  # the old checkpoint, still whole and valid
        assert bg.telemetry.value("collector_dead_letter_dropped_total", reason="disk_full") == 10
        small_disk.free()
        wait_until(lambda: _offset(state) == log.stat().st_size, what="the checkpoint catching up")
        _append(log, 200, 10, corrupt=3)
        dead = state / "dead-letter" / "files.ndjson"
        wait_until(lambda: len(read_ndjson(dead)) == 3, what="dead letters written again")
        assert bg.stop() == 0
    assert "disk space is back: writing checkpoints again" in caplog.text
    assert [d["message"] for d in read_ndjson(tmp_path / "out.ndjson")] == [f"m{i}" for i in range(210)]


def test_a_disk_still_full_at_exit_says_the_place_was_not_saved(tmp_path, small_disk, caplog):
    from tests.helpers import run_once

    (tmp_path / "logs").mkdir()
    _append(tmp_path / "logs" / "app-json.log", 0, 50)
    small_disk.fill()
    caplog.set_level("INFO")
    rc = run_once(_pipeline(tmp_path, small_disk.path / "state", shutdown_timeout=0.5))
    assert rc == 1  # every record delivered, but the place is not saved: not a clean 0
    assert len(read_ndjson(tmp_path / "out.ndjson")) == 50
    assert "checkpoints could not be saved" in caplog.text and "read again at the next start" in caplog.text
    assert "Traceback" not in caplog.text
