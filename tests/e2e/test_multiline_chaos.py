"""kill -9 in the middle of a stack trace: json-file -> multiline -> a real Elasticsearch.

The collector follows a container's json-file log (4 KiB reads, so the traces cross reads) while
a trace is only half written; once everything before the trace is in Elasticsearch it is killed
with SIGKILL.  The rest of the trace and more lines are written, and a second run (``--once``)
finishes.  Elasticsearch must then hold every record exactly once, each trace whole, with the id
of its first line: the half trace was never emitted, and the checkpoint never passed its start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import all_docs
from tests.helpers import Collector, docker_line, run_cli, wait_until

CID = "d" * 64


def trace(name: str, frames: int) -> list[str]:
    return [f"java.lang.IllegalStateException: {name} " + "x" * 300] + [
        f"\tat com.example.{name}.Frame{i}.call(Frame{i}.java:{i}) " + "y" * 100 for i in range(frames)
    ]


class Log:
    def __init__(self, root: Path) -> None:
        d = root / "containers" / CID
        d.mkdir(parents=True)
        (d / "config.v2.json").write_text(json.dumps({"ID": CID, "Name": "/app", "Config": {"Image": "app:1"}}))
        self.path = d / f"{CID}-json.log"
        self.n = 0
        self.offsets: list[int] = []

    def write(self, lines: list[str]) -> None:
        with open(self.path, "ab") as f:
            for m in lines:
                self.offsets.append(f.tell())
                f.write(docker_line(m + "\n", "stdout", f"2024-05-01T12:00:00.{self.n:09d}Z"))
                self.n += 1


def test_kill_9_in_the_middle_of_a_trace(es8, es_target, tmp_path):
    root = tmp_path / "docker"
    log = Log(root)
    singles1 = [f"single {i}" for i in range(50)]
    a = trace("A", 60)  # ~9 KB: crosses 4 KiB reads
    singles2 = [f"between {i}" for i in range(20)]
    b = trace("B", 80)
    b_half, b_rest = b[:45], b[45:]  # the first half alone crosses reads too
    singles3 = [f"after {i}" for i in range(30)]
    c = trace("C", 5)
    log.write([*singles1, *a, *singles2, *b_half])

    def config(timeout: float) -> Path:
        cfg: dict[str, Any] = {
            "data_dir": str(tmp_path / "state"),
            "checkpoint_interval": 0.1,
            "sources": {"logs": {"type": "docker_json_file", "paths": [str(log.path)], "read_bytes": 4096}},
            "transforms": {"ml": {"type": "multiline", "inputs": ["logs"], "mode": "java", "timeout": timeout}},
            "sinks": {
                "es": {
                    "type": "elasticsearch",
                    "inputs": ["ml"],
                    "hosts": [es8.url],
                    "data_stream": es_target,
                    "batch": {"timeout": 0.1},
                }
            },
        }
        path = tmp_path / f"collector-{timeout}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    # the trace's first half waits for its end (timeout: 10 minutes); everything before it is delivered
    before = len(singles1) + 1 + len(singles2)
    col = Collector("run", "-c", str(config(600))).start(tmp_path / "collector.log")
    wait_until(lambda: es8.count(es_target) >= before, timeout=120, what=f"{before} records before the trace")
    b_start = log.offsets[len(singles1) + len(a) + len(singles2)]

    def committed() -> int:
        try:
            [path] = (tmp_path / "state" / "checkpoints").glob("*.json")  # the pipeline's own document
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return 0
        return max((int(st.get("offset", 0)) for st in doc["sources"].get("logs", {}).values()), default=0)

    # the checkpoint settles where acknowledgements leave it (checkpoints are written every 0.1 s
    # when they change; five intervals without a change): never past the start of the half trace.
    # (Acks go by read batch, so it may stay before b_start; the second run below proves the rest.)
    last = [-1]

    def settled() -> int | None:
        now = committed()
        same = now == last[0] and now > 0
        last[0] = now
        return now if same else None

    assert 0 < wait_until(settled, timeout=60, interval=0.5, what="the checkpoint to settle") <= b_start
    col.kill9()
    assert es8.count(es_target) == before
    log.write([*b_rest, *singles3, *c, "the end"])
    r = run_cli("run", "-c", str(config(1.0)), "--once", timeout=300)
    assert r.returncode == 0, r.stderr
    docs = all_docs(es8, es_target, ["message", "log"])
    expected = [*singles1, "\n".join(a), *singles2, "\n".join(b), *singles3, "\n".join(c), "the end"]
    got = sorted(docs, key=lambda d: d["log"]["offset"])
    assert [d["message"] for d in got] == expected  # nothing lost, nothing twice, every trace whole
    firsts = []
    k = 0
    for block in (singles1, [a], singles2, [b], singles3, [c], ["x"]):
        for item in block:
            firsts.append(log.offsets[k])
            k += len(item) if isinstance(item, list) else 1
    assert [d["log"]["offset"] for d in got] == firsts  # each record is its first line's: same id on replay
    assert len({d["_id"] for d in docs}) == len(expected)
