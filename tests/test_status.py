"""`collector status` on a data directory, with a collector running on it and without: real CLI, real
Docker engine, a real disk buffer and dead letters."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import yaml

from tests.helpers import Collector, docker_lines, read_ndjson, run_cli, wait_until
from tests.test_telemetry import api_url, tail_with_api


def rows(text: str, header: str) -> dict[str, list[str]]:
    """The table under ``header`` (its first column as the key)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == header)
    out = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) < 4 or not line.startswith("  ") or cells[0][0].isdigit():  # "  4 file(s) of ..."
            break
        out[cells[0]] = cells[1:]
    return out


def delivered(state: Path, log: Path) -> int | None:
    """The offset the checkpoints hold for ``log`` (None while there is none)."""
    found = list((state / "checkpoints").glob("*.json"))
    if not found:
        return None
    for ns in orjson.loads(found[0].read_bytes())["sources"].values():
        for e in ns.values():
            if e.get("live") == str(log):
                return int(e["offset"])
    return None


def n(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_status_names_every_container_with_its_offset_size_and_lag(docker, tmp_path):
    names = [f"st-{os.urandom(3).hex()}" for _ in range(3)]
    done = {
        name: docker.run(f'for i in $(seq 1 {40 * (k + 1)}); do echo "{name} $i"; done', name=name)
        for k, name in enumerate(names)
    }
    ticking = docker.run(
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.02; done",
        name=f"st-tick-{os.urandom(3).hex()}",
        wait=False,
    )
    state, out = tmp_path / "state", tmp_path / "out.ndjson"
    col = tail_with_api(docker, state, out)
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        wait_until(
            lambda: {d["container"]["name"] for d in read_ndjson(out)} >= {*names, ticking.name}, what="every container"
        )
        wait_until(
            lambda: all(
                delivered(state, docker.log_path(c)) == os.path.getsize(docker.log_path(c)) for c in done.values()
            ),
            what="their checkpoints",
        )
        r = run_cli("status", "--data-dir", str(state))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == f"data directory {state}: a collector is running (API {url})", r.stdout
        files = rows(r.stdout, "CONTAINER")
        for name, c in done.items():
            cid, source, offset, size, lag, path = files[name]
            assert (cid, source, lag, path) == (c.id[:12], "containers", "0", str(docker.log_path(c))), r.stdout
            assert n(offset) == n(size) == os.path.getsize(docker.log_path(c)), r.stdout
        assert ticking.name in files
        sink = rows(r.stdout, "SINK")["out"]
        # "Ns ago (HH:MM:SS)  N": the ticking container keeps the count moving
        assert sink[1] == "ago" and 0 < n(sink[-1]) <= len(read_ndjson(out)), r.stdout
        assert col.stop() == 0, col.stderr()

    # stopped: the ticking container wrote on; its lag is what the next run has to deliver
    ticking.kill()
    ticking.wait(timeout=30)
    log = docker.log_path(ticking)
    at = delivered(state, log)
    assert at is not None and os.path.getsize(log) > at
    r = run_cli("status", "--data-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"data directory {state}: no collector is running", r.stdout
    files = rows(r.stdout, "CONTAINER")
    assert set(files) >= {*names, ticking.name}
    cid, _, offset, size, lag, _ = files[ticking.name]
    assert (cid, n(offset), n(size), n(lag)) == (
        ticking.id[:12],
        at,
        os.path.getsize(log),
        os.path.getsize(log) - at,
    ), r.stdout
    assert f"behind by {os.path.getsize(log) - at:,} bytes" in r.stdout
    assert "last delivery" not in r.stdout  # nothing runs to ask


def test_status_counts_a_disk_buffer_and_dead_letters_while_the_output_is_down(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app-json.log"
    log.write_bytes(docker_lines([f"kept {i}" for i in range(300)]) + b"{broken\n" * 7 + b"[1, 2]\n" * 2)
    state = tmp_path / "state"
    cfg = {
        "data_dir": str(state),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(logs / "*-json.log")]}},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["files"],
                "hosts": ["http://127.0.0.1:1"],  # nothing listens: records wait in the disk buffer
                "buffer": {"type": "disk"},
                "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
            }
        },
        "api": {"listen": "tcp://127.0.0.1:0"},
        "shutdown_timeout": 2,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    col = Collector("run", "-c", str(tmp_path / "p.yaml"))
    with col.start(tmp_path / "err.log"):
        api_url(state, col)
        wait_until(lambda: delivered(state, log) == log.stat().st_size, what="everything in the disk buffer")
        assert col.stop(signal.SIGTERM) == 3, col.stderr()  # undelivered: kept in the buffer
    r = run_cli("status", "--data-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "no collector is running" in r.stdout.splitlines()[0]
    (row,) = rows(r.stdout, "CONTAINER").values()
    assert row[1:5] == ["files", f"{log.stat().st_size:,}", f"{log.stat().st_size:,}", "0"], r.stdout
    buffered = rows(r.stdout, "SINK")["es"]
    segments = sorted((state / "buffers" / "es").glob("*.seg"))
    assert n(buffered[0]) == sum(p.stat().st_size for p in segments), r.stdout
    assert n(buffered[1]) == 300 and buffered[2] == str(len(segments)), r.stdout
    letters = rows(r.stdout, "FILE")["files.ndjson"]
    assert n(letters[0]) == 9 == len(read_ndjson(state / "dead-letter" / "files.ndjson")), r.stdout
    assert n(letters[1]) == (state / "dead-letter" / "files.ndjson").stat().st_size


def test_status_of_a_directory_that_is_not_there_is_a_usage_error(tmp_path):
    r = run_cli("status", "--data-dir", str(tmp_path / "nope"))
    assert r.returncode == 2 and f"no data directory at {tmp_path / 'nope'}" in r.stderr, r.stderr


def test_status_of_a_fresh_directory_says_nothing_was_delivered(tmp_path):
    d = Path(tmp_path)
    r = run_cli("status", "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert "checkpoints: none yet" in r.stdout and "disk buffers: none" in r.stdout and "dead letters: none" in r.stdout
