"""The multiline transform: exact boundaries for each mode, through the real json-file source
(traces split across reads), per-container modes from labels, the limits, the timeout, and the
acknowledgements it holds back.  kill -9 in the middle of a trace: tests/e2e/test_multiline_chaos.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from collector.acks import OrderedAcks
from collector.checkpoints import CheckpointStore
from collector.component import Context
from collector.config import ConfigError, validate_config
from collector.deadletter import DeadLetter
from collector.event import Batch, Fields
from collector.telemetry import Telemetry
from collector.transforms.multiline import MultilineConfig, MultilineTransform
from tests.helpers import BackgroundPipeline, docker_line, read_ndjson, run_once, wait_until

JAVA = [
    'Exception in thread "main" java.lang.IllegalStateException: boom',
    "\tat com.example.App.run(App.java:42)",
    "\tat com.example.App.main(App.java:7)",
    "Caused by: java.io.IOException: disk full",
    "\tat com.example.Store.write(Store.java:99)",
    "\t... 2 more",
]
PYTHON = [
    "Traceback (most recent call last):",
    '  File "/app/main.py", line 10, in <module>',
    "    run()",
    "KeyError: 'x'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/app/main.py", line 12, in <module>',
    '    raise ValueError("bad")',
    "ValueError: bad",
]
GO = [
    "panic: runtime error: index out of range [5] with length 3",
    "",
    "goroutine 1 [running]:",
    "main.main()",
    "\t/app/main.go:8 +0x1d",
    "",
    "goroutine 18 [chan receive]:",
    "net/http.(*conn).serve(0xc000102000, {0x6f8b40, 0xc0000a2000})",
    "\t/usr/local/go/src/net/http/server.go:2009 +0x5f4",
    "created by net/http.(*Server).Serve in goroutine 1",
    "\t/usr/local/go/src/net/http/server.go:3086 +0x5cb",
    "exit status 2",
]
NODE = [
    "TypeError: Cannot read properties of undefined (reading 'x')",
    "    at Object.<anonymous> (/app/index.js:3:15)",
    "    at Module._compile (node:internal/modules/cjs/loader:1256:14)",
    "    at async Promise.all (index 0)",
]


def ctx(tmp_path: Path, once: bool = False) -> Context:
    t = Telemetry()
    return Context(tmp_path, t, CheckpointStore(tmp_path), DeadLetter(tmp_path, t), once=once)


def transform(tmp_path: Path, once: bool = True, **cfg: Any) -> MultilineTransform:
    c = MultilineConfig.model_validate({"type": "multiline", "inputs": ["x"], **cfg})
    return MultilineTransform("ml", c, ctx(tmp_path, once))


def run(t: MultilineTransform, lines: list[str], stream: str = "stdout", per_batch: int = 0) -> list[str]:
    """Feed ``lines`` as events (in batches of ``per_batch``), then end the input: the texts out."""

    async def go() -> list[Batch]:
        out = []
        step = per_batch or len(lines) or 1
        for k in range(0, len(lines), step):
            evs = [{"message": m, "stream": stream} for m in lines[k : k + step]]
            b = Batch(evs, Fields({"container": {"id": "c1"}}), ids=[str(k + i) for i in range(len(evs))], source="s")
            out += [b for _, b in await t.process(b)]
        out += [b for _, b in await t.finish()]
        return out

    return [ev["message"] for b in asyncio.run(go()) for ev in b.events]


NOISE = ["12:00:00 INFO started", "12:00:01 INFO request served"]


@pytest.mark.parametrize(
    ("mode", "trace"), [("java", JAVA), ("python", PYTHON), ("go", GO), ("node", NODE)], ids=lambda x: str(x)[:6]
)
@pytest.mark.parametrize("per_batch", [0, 1, 3])
def test_each_mode_joins_its_traces_exactly(tmp_path, mode, trace, per_batch):
    lines = [*NOISE, *trace, "12:00:02 INFO after", *trace, *NOISE]
    out = run(transform(tmp_path, mode=mode), lines, per_batch=per_batch)
    joined = "\n".join(trace)
    assert out == [*NOISE, joined, "12:00:02 INFO after", joined, *NOISE]


def test_blank_lines_held_by_python_and_go_are_not_lost_when_nothing_follows(tmp_path):
    lines = ["Traceback (most recent call last):", '  File "x", line 1', "E: e", "", "", "next"]
    assert run(transform(tmp_path, mode="python"), lines) == ["\n".join(lines[:3]), "", "", "next"]
    lines = ["panic: x", "", "goroutine 1 [running]:", "main.f()", "", "plain"]
    assert run(transform(tmp_path, mode="go"), lines) == ["\n".join(lines[:4]), "", "plain"]


def test_pattern_mode_start_continue_and_both(tmp_path):
    lines = ["2024-05-01 a", "  more", "more still", "2024-05-01 b", "2024-05-01 c", "x"]
    start = r"^\d{4}-\d\d-\d\d "
    assert run(transform(tmp_path, mode="pattern", start_pattern=start), lines) == [
        "2024-05-01 a\n  more\nmore still",
        "2024-05-01 b",
        "2024-05-01 c\nx",
    ]
    assert run(transform(tmp_path, mode="pattern", continue_pattern=r"^\s"), lines) == [
        "2024-05-01 a\n  more",
        "more still",
        "2024-05-01 b",
        "2024-05-01 c",
        "x",
    ]
    assert run(transform(tmp_path, mode="pattern", start_pattern=start, continue_pattern=r"^\s"), lines) == [
        "2024-05-01 a\n  more",
        "more still",
        "2024-05-01 b",
        "2024-05-01 c",
        "x",
    ]


def test_limits_split_and_flag_but_lose_nothing(tmp_path):
    trace = ["E: x"] + [f"\tat f{i}()" for i in range(9)]
    t = transform(tmp_path, mode="java", max_lines=4)
    out = run(t, trace)
    assert out == ["\n".join(trace[0:4]), "\n".join(trace[4:8]), "\n".join(trace[8:10])]
    assert "\n".join(out) == "\n".join(trace)
    big = ["E: " + "x" * 700, "\tat " + "y" * 700, "\tat z"]
    out = run(transform(tmp_path, mode="java", max_bytes=1024), big)
    assert out == [big[0], big[1] + "\n" + big[2]]


def test_streams_are_joined_separately(tmp_path):
    t = transform(tmp_path, mode="java")

    async def go() -> list[tuple[str, str]]:
        evs = [
            {"message": "E: out", "stream": "stdout"},
            {"message": "E: err", "stream": "stderr"},
            {"message": "\tat out()", "stream": "stdout"},
            {"message": "\tat err()", "stream": "stderr"},
        ]
        b = Batch(evs, Fields({"container": {"id": "c1"}}), source="s")
        outs = [b for _, b in await t.process(b)] + [b for _, b in await t.finish()]
        return sorted((e["stream"], e["message"]) for b in outs for e in b.events)

    assert asyncio.run(go()) == [("stderr", "E: err\n\tat err()"), ("stdout", "E: out\n\tat out()")]


def test_acks_are_held_until_the_record_that_spans_them_is_finalized(tmp_path):
    """A batch is acknowledged only when every record holding its lines is, and a batch whose last
    record continues into the next only with that next batch: the checkpoint lands between records."""
    t = transform(tmp_path, once=False, mode="java")
    commits: list[int] = []
    acks = OrderedAcks(0, commits.append)

    async def go() -> list[Batch]:
        outs = []
        for pos, lines in ((10, ["a", "E: x", "\tat 1"]), (20, ["\tat 2"]), (30, ["\tat 3", "b"]), (40, ["c"])):
            evs = [{"message": m, "stream": "stdout"} for m in lines]
            b = Batch(evs, Fields({"container": {"id": "c1"}}), ack=acks.track(pos), source="s")
            outs += [b for _, b in await t.process(b)]
        return outs

    outs = asyncio.run(go())
    texts = [[e["message"] for e in b.events] for b in outs]
    assert texts == [["a"], ["E: x\n\tat 1\n\tat 2\n\tat 3"], ["b"]]  # "c" waits for its next line
    outs[0].ack.done()
    assert commits == []  # batch 10 also holds the trace, still in flight
    outs[1].ack.done(rejected=1)  # the joined trace was dead-lettered downstream
    assert commits == []  # batch 10 ends inside the trace: it waits for batch 30, which holds "b"
    outs[2].ack.done()
    assert commits == [30]  # past the trace, never inside it; batch 40 is held by the pending "c"
    assert (acks.rejected, acks.failed) == (1, 0)  # the source hears it, once (not once per input batch)


def write_container(root: Path, cid: str, lines: list[tuple[str, str]], labels: dict[str, str]) -> Path:
    d = root / "containers" / cid
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.v2.json").write_text(
        json.dumps({"ID": cid, "Name": f"/{cid[:6]}", "Config": {"Image": "app:1", "Labels": labels}})
    )
    path = d / f"{cid}-json.log"
    with open(path, "ab") as f:
        for k, (stream, m) in enumerate(lines):
            f.write(docker_line(m + "\n", stream, f"2024-05-01T12:00:{k // 1000:02d}.{k % 1000:09d}Z"))
    return path


def test_json_file_containers_choose_their_mode_by_label_and_reads_split_traces(tmp_path):
    """The real json-file source (4 KiB reads: traces cross reads), docker_metadata from
    config.v2.json, multiline with mode none: only the labelled containers are joined."""
    root = tmp_path / "docker"
    java_id, py_id, plain_id = (hashlib.sha256(n.encode()).hexdigest() for n in ("java", "py", "plain"))
    long_java = ["E: " + "x" * 3000, *[f"\tat com.example.F{i}.m(F.java:{i})" for i in range(200)]]
    java_lines = [
        ("stdout", "start"),
        *(("stderr", m) for m in long_java),
        ("stdout", "end"),
        *(("stderr", m) for m in JAVA),
    ]
    py_lines = [("stdout", m) for m in [*NOISE, *PYTHON, "after"]]
    plain_lines = [("stdout", m) for m in JAVA]
    write_container(root, java_id, java_lines, {"collector.multiline": "java"})
    write_container(root, py_id, py_lines, {"collector.multiline": "python"})
    write_container(root, plain_id, plain_lines, {})
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "docker_root": str(root),
        "sources": {
            "files": {
                "type": "docker_json_file",
                "paths": [str(root / "containers" / "*" / "*-json.log")],
                "read_bytes": 4096,
            }
        },
        "transforms": {
            "meta": {"type": "docker_metadata", "inputs": ["files"], "metadata": "files"},
            "ml": {"type": "multiline", "inputs": ["meta"], "mode": "none"},
        },
        "sinks": {"out": {"type": "file", "inputs": ["ml"], "path": str(out), "fsync": "never"}},
    }
    assert run_once(cfg) == 0
    recs = read_ndjson(out)
    by = {cid: [r for r in recs if r["container"]["id"] == cid] for cid in (java_id, py_id, plain_id)}
    assert sorted((r["stream"], r["message"]) for r in by[java_id]) == sorted(
        [("stdout", "start"), ("stderr", "\n".join(long_java)), ("stdout", "end"), ("stderr", "\n".join(JAVA))]
    )
    assert [r["message"] for r in by[py_id]] == [*NOISE, "\n".join(PYTHON), "after"]
    assert [r["message"] for r in by[plain_id]] == JAVA  # no label, mode none: untouched
    joined = next(r for r in by[java_id] if r["message"].startswith("E: x"))
    assert joined["log"]["flags"] == ["multiline"]
    first_offset = len(docker_line("start\n", "stdout", "2024-05-01T12:00:00.000000000Z"))
    assert joined["log"]["offset"] == first_offset  # the first line's offset
    # run again: checkpoints past everything, nothing read twice
    assert run_once(cfg) == 0
    assert len(read_ndjson(out)) == len(recs)


def test_a_quiet_container_gets_its_record_after_the_timeout(tmp_path):
    root = tmp_path / "docker"
    cid = "a" * 64
    path = write_container(root, cid, [("stdout", m) for m in JAVA[:3]], {})
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(path)]}},
        "transforms": {"ml": {"type": "multiline", "inputs": ["files"], "mode": "java", "timeout": 0.5}},
        "sinks": {"out": {"type": "file", "inputs": ["ml"], "path": str(out), "fsync": "never"}},
    }
    with BackgroundPipeline(cfg):
        recs = wait_until(lambda: read_ndjson(out), timeout=20, what="the record after its timeout")
        assert [r["message"] for r in recs] == ["\n".join(JAVA[:3])]
        t0 = time.monotonic()
        write_container(root, cid, [("stdout", "E: second"), ("stdout", "\tat x()")], {})
        wait_until(lambda: len(read_ndjson(out)) == 2, timeout=20, what="the second record")
        assert time.monotonic() - t0 >= 0.4
        assert read_ndjson(out)[1]["message"] == "E: second\n\tat x()"


def test_config_errors():
    def check(**t: Any) -> str:
        cfg = {
            "sources": {"s": {"type": "syslog", "listen": ["udp://127.0.0.1:0"]}},
            "transforms": {"m": {"type": "multiline", "inputs": ["s"], **t}},
            "sinks": {"o": {"type": "console", "inputs": ["m"]}},
        }
        with pytest.raises(ConfigError) as e:
            validate_config(cfg)
        return str(e.value)

    assert "mode" in check()
    assert "needs `start_pattern`" in check(mode="pattern")
    assert "bad pattern" in check(mode="pattern", start_pattern="(")
    assert "max_lines" in check(mode="java", max_lines=1)


def run_both(tmp_path: Path, lines: list[tuple[str, str]], cuts: list[int], **cfg: Any) -> tuple[Any, Any]:
    """The same lines through the events path and the columns (json-file) path, cut into the same
    batches: per stream, the records (text, flags) each path made."""
    from collector.codecs.docker_json import DockerLines, Parsed

    async def go(columns: bool) -> dict[str, list[tuple[str, list[str]]]]:
        t = transform(tmp_path, **cfg)
        outs: list[Batch] = []
        bounds = [0, *cuts, len(lines)]
        for a, b in itertools.pairwise(bounds):
            chunk = lines[a:b]
            if not chunk:
                continue
            if columns:
                p = Parsed()
                for k, (st, m) in enumerate(chunk):
                    p.times.append(f"t{a + k}")
                    p.messages.append(m)
                    p.streams.append(st)
                    p.offsets.append(a + k)
                batch = Batch(None, Fields({"container": {"id": "c"}}), columns=DockerLines(p, "/f"), source="s")
            else:
                evs = [{"message": m, "stream": st} for st, m in chunk]
                batch = Batch(evs, Fields({"container": {"id": "c"}}), source="s")
            outs += [o for _, o in await t.process(batch)]
        outs += [o for _, o in await t.finish()]
        got: dict[str, list[tuple[str, list[str]]]] = {}
        for o in outs:
            for ev in o.events:
                got.setdefault(ev["stream"], []).append((ev["message"], (ev.get("log") or {}).get("flags") or []))
        return got

    return asyncio.run(go(False)), asyncio.run(go(True))


@pytest.mark.parametrize("seed", range(30))
def test_the_fast_column_path_makes_the_same_records_as_the_general_one(tmp_path, seed):
    import random

    rng = random.Random(seed)
    pool = [
        "E: boom",
        "plain line",
        "\tat f()",
        "    at g (x.js:1:2)",
        "\t... 3 more",
        "Caused by: x",
        "",
        "  indented",
    ]
    lines = [(rng.choice(["stdout", "stderr"]), rng.choice(pool)) for _ in range(rng.randint(1, 60))]
    cuts = sorted(rng.sample(range(1, len(lines) + 1), k=min(len(lines), rng.randint(0, 8))))
    for cfg in (
        {"mode": "java", "max_lines": rng.randint(2, 6)},
        {"mode": "node", "max_bytes": 1024},
        {"mode": "pattern", "continue_pattern": r"^\s"},
        {"mode": "pattern", "start_pattern": r"^[A-Z]", "max_lines": 3},
    ):
        events, columns = run_both(tmp_path, lines, cuts, **cfg)
        assert columns == events, cfg
        for st in ("stdout", "stderr"):  # and nothing lost: the lines of each stream, in order
            assert "\n".join(m for m, _ in events.get(st, [])) == "\n".join(m for s, m in lines if s == st)
