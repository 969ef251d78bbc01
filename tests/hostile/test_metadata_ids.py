"""Issue 13 rows 6 and 8: container ids from peers (forward ``container_id``, GELF
``_container_id``) and the metadata caches, against the real collector (``run -c``) at default
settings, while a well-behaved client sends 1,000 numbered records of a real-looking container.

Row 6: an id like ``../../srv/x`` made the collector read that directory's ``config.v2.json``
(a sender chose the name, image and labels); pointing it at a FIFO froze the whole collector; a
NUL byte gave a traceback per batch.  Row 8: 200,000 distinct ids kept 587 MB.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.helpers import read_ndjson
from tests.hostile.files_harness import Running, poll_until, record_figures

GOOD_ID = "9" * 64
FIFO_ID = "f" * 64


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_root(tmp_path: Path) -> Path:
    """A Docker root with the good container's config.v2.json, a FIFO where another's should
    be, and, outside it, a directory a sender would like us to read."""
    root = tmp_path / "docker"
    good = root / "containers" / GOOD_ID
    good.mkdir(parents=True)
    (good / "config.v2.json").write_text(
        json.dumps({"ID": GOOD_ID, "Name": "/good-app", "Config": {"Image": "app:1", "Labels": {"team": "a"}}})
    )
    fifo = root / "containers" / FIFO_ID
    fifo.mkdir()
    os.mkfifo(fifo / "config.v2.json")
    planted = tmp_path / "srv" / "x"
    planted.mkdir(parents=True)
    (planted / "config.v2.json").write_text(
        json.dumps({"ID": "x", "Name": "/planted", "Config": {"Image": "evil:1", "Labels": {"admin": "yes"}}})
    )
    return root


def start(tmp_path: Path, root: Path) -> tuple[Running, int, int, Path]:
    fwd, gelf = free_port(), free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.ndjson"
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "state"),
                "docker_root": str(root),
                "sources": {
                    "fwd": {"type": "fluent_forward", "listen": [f"tcp://127.0.0.1:{fwd}"]},
                    "gelf": {"type": "gelf", "listen": [f"udp://127.0.0.1:{gelf}"]},
                },
                "transforms": {
                    # default settings; no Docker API here (auto: files)
                    "meta": {
                        "type": "docker_metadata",
                        "inputs": ["fwd", "gelf"],
                        "docker_host": f"unix://{tmp_path}/no-docker.sock",
                    }
                },
                "sinks": {"out": {"type": "file", "inputs": ["meta"], "path": str(out), "fsync": "never"}},
            }
        )
    )
    r = Running(["run", "-c", str(cfg)], tmp_path)
    r.wait_for_log("receiving GELF", timeout=60)
    poll_until(lambda: _can_connect(fwd), 30, "the forward listener")
    return r, fwd, gelf, out


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def forward(port: int, records: list[dict[str, Any]], tag: str = "docker.app") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for rec in records:
            s.sendall(msgpack.packb([tag, int(time.time()), rec]))


def docker_rec(cid: str, log: str) -> dict[str, Any]:
    return {"container_id": cid, "container_name": "/sender-says", "source": "stdout", "log": log}


def good_records(port: int, n: int = 1000) -> None:
    forward(port, [docker_rec(GOOD_ID, f"good {i}") for i in range(n)], tag="docker.good")


def wait_good(out: Path, r: Running, n: int = 1000, timeout: float = 30) -> list[dict[str, Any]]:
    """The good client's records, all of them within ``timeout`` seconds, with their metadata."""
    deadline = time.monotonic() + timeout
    while True:
        good = [d for d in read_ndjson(out) if str(d.get("message", "")).startswith("good ")]
        if len(good) >= n:
            break
        assert r.alive(), f"collector exited {r.rc}:\n{r.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{len(good)} of {n} good records after {timeout}s:\n{r.log()[-3000:]}"
        time.sleep(0.1)
    assert sorted(int(d["message"].split()[1]) for d in good) == list(range(n))
    for d in good:
        c = d["container"]
        assert c["id"] == GOOD_ID and c["image"]["name"] == "app:1" and c["labels"] == {"team": "a"}, c
    return good


TRAVERSAL = "../../srv/x"  # relative to <docker_root>/containers


@pytest.mark.parametrize(
    "attack",
    ["forward-traversal", "gelf-traversal", "forward-fifo", "forward-nul", "gelf-nul", "gelf-not-text"],
)
def test_peer_container_ids_never_become_paths(tmp_path: Path, attack: str) -> None:
    root = docker_root(tmp_path)
    r, fwd, gelf, out = start(tmp_path, root)
    try:
        cid: Any = {
            "forward-traversal": TRAVERSAL,
            "gelf-traversal": TRAVERSAL,
            "forward-fifo": FIFO_ID,
            "forward-nul": "ab\x00cd",
            "gelf-nul": "ab\x00cd",
            "gelf-not-text": {"a": [1, 2]},
        }[attack]
        for round_ in range(20):  # 20 batches of 50, then the good client, then more
            if attack.startswith("gelf"):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    for i in range(50):
                        msg = {"version": "1.1", "host": "h", "short_message": f"attack {round_}-{i}"}
                        u.sendto(json.dumps({**msg, "_container_id": cid}).encode(), ("127.0.0.1", gelf))
            else:
                forward(fwd, [docker_rec(cid, f"attack {round_}-{i}") for i in range(50)])
            if round_ == 10:
                good_records(fwd)
        wait_good(out, r)
        attacks = [d for d in read_ndjson(out) if str(d.get("message", "")).startswith("attack ")]
        if not attack.startswith("gelf"):  # UDP may drop; TCP must not
            poll_until(lambda: len([d for d in read_ndjson(out) if "attack" in str(d.get("message"))]) >= 1000, 30, "")
            attacks = [d for d in read_ndjson(out) if str(d.get("message", "")).startswith("attack ")]
        for d in attacks:
            c = d.get("container") or {}
            assert "planted" not in json.dumps(d) and "evil:1" not in json.dumps(d), d
            assert "labels" not in c and "image" not in c, d
        assert r.alive()
        outcome = r.stop()
    finally:
        r.kill()
    assert outcome.rc == 0, outcome.stderr[-3000:]
    outcome.assert_within_limits()
    assert "records of" in outcome.stderr and "go out with only container.id" in outcome.stderr
    record_figures(f"row 6: {attack}", outcome, good=1000)


def test_many_distinct_ids_keep_memory_bounded(tmp_path: Path) -> None:
    """Row 8: 200,000 distinct (valid) ids, each unknown: every cache stays bounded."""
    root = docker_root(tmp_path)
    r, fwd, _, out = start(tmp_path, root)
    n = 200_000
    try:
        with socket.create_connection(("127.0.0.1", fwd), timeout=60) as s:
            for base in range(0, n, 1000):
                recs = [
                    ["docker.x", int(time.time()), docker_rec(f"{base + i:064x}", f"attack {base + i}")]
                    for i in range(1000)
                ]
                s.sendall(b"".join(msgpack.packb(m) for m in recs))
        good_records(fwd)
        wait_good(out, r, timeout=120)
        poll_until(lambda: _count(out, "attack ") >= n, 120, f"{n} attack records")
        outcome = r.stop()
    finally:
        r.kill()
    assert outcome.rc == 0, outcome.stderr[-3000:]
    outcome.assert_within_limits()
    record_figures("row 8: 200,000 distinct container ids", outcome, good=1000)


def _count(out: Path, prefix: str) -> int:
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b'"message":"' + prefix.encode())
