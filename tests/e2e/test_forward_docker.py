"""Docker's ``fluentd`` log driver against the collector: a real engine, real containers.

The engine runs with ``--bridge=none`` and the containers with no network: the driver
connects from dockerd itself (host network) to the collector on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import REPO, BackgroundPipeline, Collector, read_ndjson, wait_until
from tests.sources.test_fluent_forward import Running, free_port

IMAGE = "collector-test/busybox:latest"
N = 400
WRITER = f"""
i=0
while [ $i -lt {N} ]; do
  echo "seq=$i to stdout"
  if [ $((i % 40)) -eq 0 ]; then echo "seq=$i to stderr" >&2; fi
  i=$((i+1))
done
head -c 40000 /dev/zero | tr '\\0' 'x'; echo
printf 'caf\\303\\251 \\346\\227\\245\\346\\234\\254 \\342\\234\\205\\n'
echo "last line"
"""
# Docker's driver (fluent-logger-golang) writes stdout and stderr on one connection from two
# goroutines and reads acks without a lock: with fluentd-request-ack each may read the other's
# ack, and both resend.  So the ack case logs to stdout only.
ACK_WRITER = f"""
i=0
while [ $i -lt {N} ]; do echo "seq=$i to stdout"; i=$((i+1)); done
head -c 40000 /dev/zero | tr '\\0' 'x'; echo
"""
LABELS = {"com.docker.compose.project": "demo", "com.docker.compose.service": "web", "team": "core"}


def expected(ack: bool = False) -> dict[str, list[str]]:
    out = [f"seq={i} to stdout" for i in range(N)] + ["x" * 40000]
    if ack:
        return {"stdout": out, "stderr": []}
    out += ["caf\u00e9 \u65e5\u672c \u2705", "last line"]
    return {"stdout": out, "stderr": [f"seq={i} to stderr" for i in range(0, N, 40)]}


@contextlib.contextmanager
def collector(tmp_path: Path, docker: Any) -> Iterator[Running]:
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"]}},
        "transforms": {
            "meta": {"type": "docker_metadata", "inputs": ["fwd"], "metadata": "api", "docker_host": docker.host}
        },
        "sinks": {"out": {"type": "file", "inputs": ["meta"], "path": str(out)}},
    }
    with BackgroundPipeline(cfg) as bg:
        yield Running(bg, out)
        assert bg.stop() == 0


def streams(records: list[dict[str, Any]], name: str) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for r in records:
        if r["container"]["name"] == name:
            got[r["stream"]].append(r["message"])
    return got


@pytest.mark.parametrize(
    "opts",
    [
        {"fluentd-sub-second-precision": "true"},
        {"fluentd-sub-second-precision": "false"},
        # async: lines still queued when the container stops are dropped by Docker, so it lingers
        {"fluentd-async": "true", "fluentd-sub-second-precision": "true"},
        {"fluentd-request-ack": "true", "fluentd-sub-second-precision": "true"},
    ],
    ids=["sub-second", "seconds", "async", "ack"],
)
def test_fluentd_driver_every_line_once_tagged_and_enriched(docker, tmp_path, opts):
    ack = "fluentd-request-ack" in opts
    script = ACK_WRITER if ack else WRITER + ("sleep 3\n" if "fluentd-async" in opts else "")
    with collector(tmp_path, docker) as run:
        log_opts = {"fluentd-address": f"127.0.0.1:{run.port}", "tag": "docker.{{.Name}}", **opts}
        name = f"writer-{uuid.uuid4().hex[:6]}"
        c = docker.run(script, name=name, labels=LABELS, log_driver="fluentd", log_opts=log_opts)
        total = sum(len(v) for v in expected(ack).values())
        records = run.wait_records(total, timeout=60)
        c.remove()  # the driver flushed everything when the container stopped: nothing more comes
        assert len(run.records()) == total
    got = streams(records, name)
    for stream, lines in expected(ack).items():  # every line once, in order, the long one whole
        assert len(got[stream]) == len(lines), stream
        for i, (a, b) in enumerate(zip(got[stream], lines, strict=True)):
            assert a == b, f"{stream} line {i}: {a[:100]!r} (length {len(a)}) != {b[:100]!r} (length {len(b)})"
    rec = records[0]
    assert rec["tags"] == [f"docker.{name}"]
    assert rec["container"]["id"] == c.id
    assert rec["container"]["image"]["name"] == IMAGE
    labels = rec["container"]["labels"]
    assert {k: labels[k] for k in ("com_docker_compose_project", "com_docker_compose_service", "team")} == {
        "com_docker_compose_project": "demo",
        "com_docker_compose_service": "web",
        "team": "core",
    }
    assert rec["container"]["compose"] == {"project": "demo", "service": "web"}
    stamps = [r["@timestamp"] for r in records]
    assert all(len(s) == 30 and s.endswith("Z") for s in stamps)
    whole_seconds = [s.endswith(".000000000Z") for s in stamps]
    if opts["fluentd-sub-second-precision"] == "true":
        assert not all(whole_seconds)
    else:
        assert all(whole_seconds)
    assert "log" not in rec  # no truncation, no incomplete split line


def test_seed_scenario_with_collector_receive(docker, tmp_path):
    """The user's notes, verbatim: a detached container logging every 10 s through the driver."""
    port = free_port()
    out = tmp_path / "out.ndjson"
    args = ["--log-level", "info", "receive", "--listen", f"forward+tcp://127.0.0.1:{port}", "--output", f"file:{out}"]
    args += ["--data-dir", str(tmp_path / "state"), "--docker-host", docker.host, "--metadata", "api"]
    with Collector(*args).start(tmp_path / "collector.log") as col:
        wait_until(lambda: "listening for the forward protocol" in col.stderr(), 30, what="the collector")
        c = docker.run(
            'while true; do echo "yoo A"; sleep 10; done;',
            name="log-test-container-A",
            log_driver="fluentd",
            log_opts={"fluentd-address": f"localhost:{port}", "tag": "log-test-container-A"},
            wait=False,
        )
        wait_until(lambda: read_ndjson(out), 30, what="the first line")
        c.remove(force=True)
        assert col.stop() == 0, col.stderr()
    rec = read_ndjson(out)[0]
    assert rec["message"] == "yoo A"
    assert rec["tags"] == ["log-test-container-A"]
    assert rec["stream"] == "stdout"
    assert rec["container"]["name"] == "log-test-container-A"
    assert rec["container"]["id"] == c.id
    assert rec["container"]["image"]["name"] == IMAGE


def test_seed_scenario_with_the_pipeline_file(docker, tmp_path):
    """pipelines/fluentd-driver-to-console.yaml as shipped: console (tag-matched) and file."""
    port = free_port()
    out = tmp_path / "all.ndjson"
    env = {
        "COLLECTOR_FORWARD_LISTEN": f"tcp://127.0.0.1:{port}",
        "COLLECTOR_OUT_FILE": str(out),
        "COLLECTOR_DATA_DIR": str(tmp_path / "state"),
        "DOCKER_HOST": docker.host,
    }
    pipeline = REPO / "pipelines" / "fluentd-driver-to-console.yaml"
    with Collector("--log-level", "info", "run", "-c", str(pipeline), env=env).start(tmp_path / "c.log") as col:
        wait_until(lambda: "listening for the forward protocol" in col.stderr(), 30, what="the collector")
        opts = {"fluentd-address": f"localhost:{port}"}
        shown = docker.run(
            'while true; do echo "yoo A"; sleep 10; done;',
            name="log-test-container-A",
            log_driver="fluentd",
            log_opts={**opts, "tag": "log-test-container-A"},
            wait=False,
        )
        docker.run('echo "not for the console"', name="other", log_driver="fluentd", log_opts={**opts, "tag": "other"})
        wait_until(lambda: len(read_ndjson(out)) >= 2, 30, what="both records")
        shown.remove(force=True)
        assert col.stop() == 0, col.stderr()
        console = [orjson.loads(line) for line in col.proc.stdout.read().splitlines() if line.strip()]
    by_tag = {r["tags"][0]: r for r in read_ndjson(out)}
    assert by_tag["log-test-container-A"]["message"] == "yoo A"
    assert by_tag["log-test-container-A"]["container"]["image"]["name"] == IMAGE
    assert by_tag["other"]["message"] == "not for the console"
    assert [r["message"] for r in console] == ["yoo A"]  # the console sink matches log-test-container-*
    assert console[0]["container"]["name"] == "log-test-container-A"
