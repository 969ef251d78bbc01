"""CRI logs (containerd, CRI-O under kubelet) through the real collector process into a real
Elasticsearch: kubelet's rotation under write with exact counts, kill -9 between the P and F
parts of a line, and ``collector tail --format cri`` itself."""

from __future__ import annotations

import gzip
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.conftest import all_docs
from tests.helpers import (
    Collector,
    checkpoint_file,
    cri_line,
    read_ndjson,
    run_cli,
    split_like_cri,
    wait_progressing,
    wait_until,
)

UID = "5e0c1a2b-aaaa-bbbb-cccc-0123456789ab"
SEQ = re.compile(r"^seq=(\d+) ")


def pod_dir(root: Path, container: str = "app") -> Path:
    d = root / "pods" / f"prod_api-6b9f7-q8zt2_{UID}" / container
    d.mkdir(parents=True)
    return d


def pipeline(tmp_path: Path, root: Path, es_url: str, target: str, **source: Any) -> Path:
    cfg: dict[str, Any] = {
        "data_dir": str(tmp_path / "state"),
        "checkpoint_interval": 0.2,
        "sources": {
            "logs": {"type": "docker_json_file", "format": "cri", "paths": [str(root / "pods/*/*/*.log")], **source}
        },
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["logs"],
                "hosts": [es_url],
                "data_stream": target,
                "retry": {"initial_backoff": 0.2, "max_backoff": 2.0},
            }
        },
        "shutdown_timeout": 20,
    }
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


class Runtime:
    """Writes a container's output as containerd does: CRI lines through the file it holds open,
    long lines in 16 KiB P parts; on ``reopen`` it opens a new live file and keeps writing to the
    old one for a few more lines before letting it go (the window kubelet's rename leaves)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.f = open(log, "ab", buffering=0)  # noqa: SIM115
        self.ns = 1_714_564_800 * 10**9

    def write(self, seq: int) -> None:
        self.ns += 1000
        t = f"2024-05-01T12:00:{(self.ns // 10**9) % 60:02d}.{self.ns % 10**9:09d}Z"
        stream = "stderr" if seq % 7 == 0 else "stdout"
        text = f"seq={seq} " + ("L" * 40000 if seq % 50 == 0 else "a line of the app ....................")
        self.f.write(split_like_cri(text, stream, t))

    def reopen(self) -> Any:
        old = self.f
        self.f = open(self.log, "ab", buffering=0)  # noqa: SIM115
        return old


def kubelet_rotate(log: Path, stamp: str) -> None:
    for p in sorted(log.parent.glob(log.name + ".*")):  # gzip the previous rotated file, via .tmp
        if p.suffix not in (".gz", ".tmp"):
            with open(p, "rb") as src, gzip.open(f"{p}.tmp", "wb") as dst:
                dst.write(src.read())
            os.replace(f"{p}.tmp", f"{p}.gz")
            os.remove(p)
    os.replace(log, f"{log}.{stamp}")


def seqs(docs: list[dict[str, Any]]) -> Counter[int]:
    return Counter(int(m.group(1)) for d in docs if (m := SEQ.match(d.get("message", ""))))


def test_kubelet_rotation_under_write_delivers_every_line_once(es8, es_target, tmp_path):
    root = tmp_path / "root"
    log = pod_dir(root) / "0.log"
    log.touch()
    n, rotations = 6000, 8
    rt = Runtime(log)

    every = n // (rotations + 1)

    def write() -> None:
        rotated = late = 0
        for i in range(1, n):
            if i % 50 == 0:
                time.sleep(0.005)  # pacing: rotations land while the collector reads, not all before
            rt.write(i)
            if late:
                late -= 1
                if not late:  # three lines after the rename: the runtime lets the old file go
                    rt.reopen().close()
            elif i % every == every - 1 and rotated < rotations:
                rotated += 1
                kubelet_rotate(log, f"20240501-12{rotated:02d}00")
                late = 3
        rt.f.close()

    cfg = pipeline(tmp_path, root, es8.url, es_target, rotation_grace=5.0)  # generous: the machine may be loaded
    rt.write(0)
    with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.err") as c:
        # files rotated before the collector first looked would be history (include_rotated: false)
        wait_until(lambda: es8.count(es_target) == 1, timeout=120, interval=0.5, what="the first line")
        w = threading.Thread(target=write)
        w.start()
        w.join(120)
        wait_progressing(lambda: es8.count(es_target), n, what=f"{n} documents")
        assert c.stop() == 0, c.stderr()
    docs = all_docs(es8, es_target, ["message", "kubernetes", "log"])
    got = seqs(docs)
    assert len(docs) == n
    assert sorted(got) == list(range(n)) and set(got.values()) == {1}  # no loss, no duplicate
    longs = [d for d in docs if int(SEQ.match(d["message"]).group(1)) % 50 == 0]
    assert all(d["message"].endswith("L" * 40000) and "flags" not in d["log"] for d in longs)
    assert {d["kubernetes"]["pod"]["name"] for d in docs} == {"api-6b9f7-q8zt2"}
    files = sorted(p.name for p in log.parent.iterdir())
    assert sum(f.endswith(".gz") for f in files) == rotations - 1 and "LOST" not in c.stderr()


def test_kill9_between_the_p_and_f_parts_gives_one_whole_record(es8, es_target, tmp_path):
    root = tmp_path / "root"
    log = pod_dir(root) / "0.log"
    first = cri_line("seq=0 before", t="2024-05-01T12:00:00Z")
    parts = split_like_cri("seq=1 " + "P" * 40000, "stdout", "2024-05-01T12:00:01Z").splitlines(keepends=True)
    log.write_bytes(first + b"".join(parts[:-1]))  # the F part is not written yet
    cfg = pipeline(tmp_path, root, es8.url, es_target)
    state = tmp_path / "state"

    def committed() -> int:
        try:
            (entry,) = orjson.loads(checkpoint_file(state).read_bytes())["sources"]["logs"].values()
        except (AssertionError, ValueError, KeyError):
            return -1
        return int(entry["offset"])

    c = Collector("run", "-c", str(cfg)).start(tmp_path / "c1.err")
    try:
        wait_until(lambda: es8.count(es_target) == 1, timeout=120, interval=0.5, what="the first record")
        # delivered and saved: the checkpoint stops at the first P part, never past it
        wait_until(lambda: committed() == len(first), timeout=60, what="the checkpoint after the F line")
    finally:
        c.kill9()
    with open(log, "ab") as f:
        f.write(parts[-1])
        f.write(cri_line("seq=2 after", t="2024-05-01T12:00:02Z"))
    with Collector("run", "-c", str(cfg)).start(tmp_path / "c2.err") as c2:
        wait_progressing(lambda: es8.count(es_target), 3, what="the rest")
        assert c2.stop() == 0, c2.stderr()
    docs = all_docs(es8, es_target, ["message", "log"])
    assert sorted(d["message"] for d in docs) == ["seq=0 before", "seq=1 " + "P" * 40000, "seq=2 after"]
    assert committed() == log.stat().st_size


def test_collector_tail_format_cri(tmp_path):
    root = tmp_path / "root"
    log = pod_dir(root, "sidecar") / "3.log"
    log.write_bytes(cri_line("one") + b"broken\n" + split_like_cri("two " * 5000))
    out = tmp_path / "out.ndjson"
    data = tmp_path / "data"
    args = ["tail", "--format", "cri", "--paths", str(root / "pods/*/*/*.log"), "--once", "--data-dir", str(data)]
    r = run_cli(*args, "--output", f"file:{out}")
    assert r.returncode == 0, r.stderr
    recs = read_ndjson(out)
    assert [x["message"] for x in recs] == ["one", ("two " * 5000)]
    assert recs[0]["kubernetes"] == {
        "namespace": "prod",
        "pod": {"name": "api-6b9f7-q8zt2", "uid": UID},
        "container": {"name": "sidecar", "restart_count": 3},
    }
    assert recs[0]["container"] == {"name": "sidecar"}
    (dl,) = read_ndjson(data / "dead-letter" / "containers.ndjson")
    assert dl["origin"]["offset"] == len(cri_line("one")) and dl["raw"] == "broken"
    r = run_cli(*args, "--tag", "{{.Name}}")
    assert r.returncode == 2 and "--tag" in r.stderr
