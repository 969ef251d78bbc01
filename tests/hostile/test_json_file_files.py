"""Issue 13 rows 11 and 12: what other programs leave among the files ``collector tail``
follows, at default settings, beside a well-behaved container writing 1,000 numbered lines.

Row 11: a FIFO named like a rotated file (``<id>-json.log.1``) hung ``tail`` forever, before it
logged anything, deaf to SIGTERM.  Row 12: a symlink out of the glob's directory was followed
silently; a 100 MB or malformed ``config.v2.json`` was read whole on the event loop, or ignored
silently; a 2 MB label was copied into every record (50 lines -> 105 MB of output).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import docker_lines, read_ndjson
from tests.hostile.files_harness import Running, record_figures, run_to_end

GOOD = "a" * 64
OTHER = "b" * 64


def container(root: Path, cid: str, lines: list[str], config: Any = None) -> Path:
    d = root / "containers" / cid
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{cid}-json.log").write_bytes(docker_lines(lines))
    if config is not None:
        (d / "config.v2.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    return d


def good_container(root: Path) -> None:
    container(
        root,
        GOOD,
        [f"good {i}" for i in range(1000)],
        {"ID": GOOD, "Name": "/good-app", "Config": {"Image": "app:1", "Labels": {"team": "a"}}},
    )


def tail_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "tail",
        "--docker-root",
        str(tmp_path / "docker"),
        "--docker-host",
        f"unix://{tmp_path}/no-docker.sock",  # auto (the default): files, as a sidecar
        "--data-dir",
        str(tmp_path / "state"),
        "--output",
        f"file:{tmp_path / 'out.ndjson'}",
        *extra,
    ]


def check_good(out: Path) -> list[dict[str, Any]]:
    records = read_ndjson(out)
    good = [d for d in records if d["container"]["id"] == GOOD]
    assert sorted(int(d["message"].split()[1]) for d in good) == list(range(1000))
    assert all(d["container"]["name"] == "good-app" and d["container"]["labels"] == {"team": "a"} for d in good)
    return records


def wait_records(r: Running, out: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(read_ndjson(out)) < n:
        assert r.alive(), f"exited {r.rc}:\n{r.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{len(read_ndjson(out))} of {n} records after {timeout}s:\n{r.log()}"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["follow", "once"])
def test_fifos_devices_and_sockets_among_the_logs_are_skipped(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "docker"
    good_container(root)
    d = container(root, OTHER, [f"other {i}" for i in range(10)])
    os.mkfifo(d / f"{OTHER}-json.log.1")  # named like a rotated file: read before the live one
    weird = root / "containers" / ("c" * 64)
    weird.mkdir()
    os.mkfifo(weird / f"{'c' * 64}-json.log")
    dev = root / "containers" / ("d" * 64)
    dev.mkdir()
    os.mknod(dev / f"{'d' * 64}-json.log", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero: never ends
    sock_dir = root / "containers" / ("e" * 64)
    sock_dir.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))  # a socket path is limited to 108 bytes: bound here, then moved
    os.rename(tmp_path / "s", sock_dir / f"{'e' * 64}-json.log")
    out = tmp_path / "out.ndjson"
    try:
        if mode == "once":
            outcome = run_to_end(tail_args(tmp_path, "--once"), tmp_path, timeout=60)
        else:
            r = Running(tail_args(tmp_path), tmp_path)
            try:
                wait_records(r, out, 1010)
                # more of them while it follows: a rotated-looking FIFO, a new container's FIFO
                os.mkfifo(d / f"{OTHER}-json.log.2")
                late = root / "containers" / ("f" * 64)
                late.mkdir()
                os.mkfifo(late / f"{'f' * 64}-json.log")
                with open(d / f"{OTHER}-json.log", "ab") as f:
                    f.write(docker_lines([f"other {i}" for i in range(10, 20)], start_ns=100))
                wait_records(r, out, 1020)
                outcome = r.stop(timeout=30)
            finally:
                r.kill()
    finally:
        sock.close()
    assert outcome.rc == 0, outcome.stderr[-3000:]
    outcome.assert_within_limits()
    records = check_good(out)
    n_other = 20 if mode == "follow" else 10
    assert sorted(d["message"] for d in records if d["container"]["id"] == OTHER) == sorted(
        f"other {i}" for i in range(n_other)
    )
    # one line per reason per minute (the others are counted): whichever was met first
    assert "-json.log: a character device, not a regular file" in outcome.stderr or (
        ", not a regular file" in outcome.stderr
    )
    record_figures(f"row 11: FIFO as <id>-json.log.1, FIFO/device/socket as logs ({mode})", outcome, good=1000)


@pytest.mark.parametrize("follow", [False, True])
def test_symlinks_out_of_the_watched_directory(tmp_path: Path, follow: bool) -> None:
    root = tmp_path / "docker"
    good_container(root)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "app.log").write_bytes(docker_lines([f"secret {i}" for i in range(5)]))
    linked = root / "containers" / OTHER
    linked.mkdir(parents=True)
    (linked / f"{OTHER}-json.log").symlink_to(secret / "app.log")
    # inside the watched directory a symlink is fine
    inside = root / "containers" / ("c" * 64)
    inside.mkdir()
    (root / "containers" / "shared.log").write_bytes(docker_lines([f"inside {i}" for i in range(5)]))
    (inside / f"{'c' * 64}-json.log").symlink_to(root / "containers" / "shared.log")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "state"),
                "docker_root": str(root),
                "sources": {
                    "c": {
                        "type": "docker_json_file",
                        **({"follow_symlinks_outside_root": True} if follow else {}),
                    }
                },
                "transforms": {
                    "m": {
                        "type": "docker_metadata",
                        "inputs": ["c"],
                        "docker_host": f"unix://{tmp_path}/no-docker.sock",
                    }
                },
                "sinks": {"o": {"type": "file", "inputs": ["m"], "path": str(tmp_path / "out.ndjson")}},
            }
        )
    )
    outcome = run_to_end(["run", "-c", str(cfg), "--once"], tmp_path)
    assert outcome.rc == 0, outcome.stderr
    outcome.assert_within_limits()
    records = check_good(tmp_path / "out.ndjson")
    messages = {d["message"] for d in records}
    assert {f"inside {i}" for i in range(5)} <= messages
    if follow:
        assert {f"secret {i}" for i in range(5)} <= messages
    else:
        assert not any(m.startswith("secret") for m in messages)
        assert f"a symlink to {secret / 'app.log'}, outside {root / 'containers'}" in outcome.stderr
        record_figures("row 12: symlink out of the watched directory", outcome, good=1000)


def test_a_huge_config_v2_json_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    good_container(root)
    big = {"ID": OTHER, "Name": "/big", "Config": {"Labels": {"huge": "x" * (100 << 20)}}}
    container(root, OTHER, [f"other {i}" for i in range(50)], big)
    outcome = run_to_end(tail_args(tmp_path, "--once"), tmp_path)
    assert outcome.rc == 0, outcome.stderr
    outcome.assert_within_limits()
    records = check_good(tmp_path / "out.ndjson")
    other = [d for d in records if d["container"]["id"] == OTHER]
    assert len(other) == 50 and all(d["container"] == {"id": OTHER} for d in other)
    assert "more than max_file_bytes" in outcome.stderr
    assert "go out with only container.id" in outcome.stderr
    record_figures("row 12: 100 MB config.v2.json", outcome, good=1000)


def test_a_malformed_config_v2_json_is_reported_once(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    good_container(root)
    container(root, OTHER, [f"other {i}" for i in range(50)], b'{"ID": "' + OTHER.encode() + b'", "Name": "/x", ')
    outcome = run_to_end(tail_args(tmp_path, "--once"), tmp_path)
    assert outcome.rc == 0, outcome.stderr
    outcome.assert_within_limits()
    check_good(tmp_path / "out.ndjson")
    said = [line for line in outcome.stderr.splitlines() if "config.v2.json: unusable" in line]
    assert len(said) == 1 and "not valid JSON" in said[0], outcome.stderr
    record_figures("row 12: malformed config.v2.json", outcome, good=1000)


def test_a_2mb_label_is_capped_and_flagged(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    good_container(root)
    cfg = {"ID": OTHER, "Name": "/labelled", "Config": {"Labels": {"big": "x" * (2 << 20), "small": "s"}}}
    container(root, OTHER, [f"other {i}" for i in range(50)], cfg)
    outcome = run_to_end(tail_args(tmp_path, "--once"), tmp_path)
    assert outcome.rc == 0, outcome.stderr
    outcome.assert_within_limits()
    out = tmp_path / "out.ndjson"
    records = check_good(out)
    other = [d for d in records if d["container"]["id"] == OTHER]
    assert len(other) == 50
    for d in other:
        c = d["container"]
        assert c["labels"] == {"big": "x" * 4096, "small": "s"} and c["metadata_truncated"] is True
    assert out.stat().st_size < 2 << 20
    assert "were cut; its records carry container.metadata_truncated: true" in outcome.stderr
    record_figures("row 12: 2 MB label, 50 lines", outcome, good=1000)


def test_docker_attrs_are_capped_and_flagged(tmp_path: Path) -> None:
    """Docker copies labels into every line's ``attrs`` (``--log-opt labels=``): capped too."""
    root = tmp_path / "docker"
    good_container(root)
    d = root / "containers" / OTHER
    d.mkdir(parents=True)
    line = {"log": "attr line\n", "stream": "stdout", "attrs": {"big": "y" * 100_000, "ok": "1"}}
    (d / f"{OTHER}-json.log").write_text(
        "".join(json.dumps({**line, "time": f"2024-05-01T12:00:00.{i:09d}Z"}) + "\n" for i in range(20))
    )
    outcome = run_to_end(tail_args(tmp_path, "--once"), tmp_path)
    assert outcome.rc == 0, outcome.stderr
    records = [r for r in check_good(tmp_path / "out.ndjson") if r["message"] == "attr line"]
    assert len(records) == 20
    for r in records:
        assert r["docker"]["attrs"] == {"big": "y" * 4096, "ok": "1"} and r["log"]["flags"] == ["fields_truncated"]
