"""The running process: signals, exit codes, the health and metrics endpoint."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest
import yaml

from tests.helpers import BackgroundPipeline, Collector, checkpoint_file, docker_lines, read_ndjson, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path, sink, api_port=None, shutdown_timeout=30):
    d = tmp_path / "logs"
    d.mkdir(exist_ok=True)
    (d / "app-json.log").write_bytes(docker_lines([f"m{i}" for i in range(10)]))
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(d / "*-json.log")]}},
        "sinks": {"out": {"inputs": ["files"], **sink}},
        "shutdown_timeout": shutdown_timeout,
    }
    if api_port:
        cfg["api"] = {"listen": f"tcp://127.0.0.1:{api_port}"}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_health_and_metrics_endpoint(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, {"type": "file", "path": str(tmp_path / "out.ndjson")}, api_port=port)
    with Collector("run", "-c", str(cfg)).start(tmp_path / "err.log") as col:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: (
                (tmp_path / "out.ndjson").exists() and len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 10
            )
        )
        metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        assert 'collector_events_received_total{component="files"} 10.0' in metrics
        assert 'collector_events_sent_total{component="out"} 10.0' in metrics
        health = urllib.request.urlopen(url + "/health", timeout=5)
        assert health.status == 200

        r = Collector("health", "--url", url)
        r.start(tmp_path / "health.log")
        assert r.proc.wait(30) == 0
        assert col.stop() == 0


def test_health_fails_when_the_engine_is_unreachable_past_unhealthy_after(tmp_path):
    """Unhealthy means: a sink has failed to deliver for longer than `unhealthy_after` (60 s by
    default; 5 s here), while nothing listens at its address."""
    port = free_port()
    cfg = write_config(
        tmp_path,
        {
            "type": "elasticsearch",
            "hosts": ["http://127.0.0.1:1"],
            "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
            "unhealthy_after": 5,
        },
        api_port=port,
        shutdown_timeout=1,
    )
    with Collector("run", "-c", str(cfg)).start(tmp_path / "err.log") as col:
        url = f"http://127.0.0.1:{port}/health"
        wait_until(lambda: _status(url) == 200, timeout=20, what="healthy at first")
        wait_until(lambda: "connection refused" in col.stderr(), what="the first failure")
        failing_since = time.monotonic()
        wait_until(lambda: _status(url) == 503, timeout=60, interval=0.2, what="unhealthy")
        assert time.monotonic() - failing_since >= 3  # not at the first failure: after unhealthy_after
        body = _body(url)
        assert "127.0.0.1:1" in body and "refused" in body.lower()
        assert col.stop() == 3  # stopped with records undelivered


def _body(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_a_second_signal_stops_at_once_and_says_records_are_left(tmp_path):
    cfg = write_config(
        tmp_path,
        {
            "type": "elasticsearch",
            "hosts": ["http://127.0.0.1:1"],
            "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
        },
        shutdown_timeout=60,
    )
    col = Collector("run", "-c", str(cfg)).start(tmp_path / "err.log")
    with col:
        wait_until(lambda: "connection refused" in col.stderr(), what="the sink failing to deliver")
        col.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "delivering what is in flight" in col.stderr(), what="the drain to begin")
        t0 = time.monotonic()
        rc = col.stop(signal.SIGTERM)
    assert time.monotonic() - t0 < 30  # not the 60 s drain deadline
    assert rc == 3
    assert "second signal" in col.stderr()


# -- no silent death ------------------------------------------------------------------------------
class InjectedError(RuntimeError):
    """The fault a test puts into one component's task."""


def _kill_config(tmp_path, port):
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(logs / "*-json.log")]}},
        "transforms": {"keep": {"type": "filter", "inputs": ["files"], "drop": {"message": "^never$"}}},
        "sinks": {"out": {"type": "file", "inputs": ["keep"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
        "api": {"listen": f"tcp://127.0.0.1:{port}"},
        "checkpoint_interval": 0.1,
        "shutdown_timeout": 5,
        "restart": {"retry": {"initial_backoff": 0.01, "max_backoff": 0.05, "max_elapsed": 1.0}},
    }


def _inject(monkeypatch, component, armed):
    """Make ``component``'s task fail with InjectedError once ``armed`` is set."""
    from collector.buffers.memory import MemoryBuffer
    from collector.checkpoints import CheckpointStore
    from collector.component import Emitter
    from collector.sinks.file import FileSink

    if component in ("source", "transform"):
        target = {"source": "files", "transform": "keep"}[component]
        emit = Emitter.emit

        async def emit_or_fail(self, batch):
            if self.name == target and armed.is_set():
                raise InjectedError(f"injected into {component}")
            await emit(self, batch)

        monkeypatch.setattr(Emitter, "emit", emit_or_fail)
    elif component == "buffer":
        flush = MemoryBuffer._flush_drops

        def flush_or_fail(self):
            if armed.is_set():
                raise InjectedError("injected into buffer")
            flush(self)

        monkeypatch.setattr(MemoryBuffer, "_flush_drops", flush_or_fail)
    elif component == "sink":
        write = FileSink._write

        def write_or_fail(fd, data, sync):
            if armed.is_set():
                raise InjectedError("injected into sink")
            write(fd, data, sync)

        monkeypatch.setattr(FileSink, "_write", staticmethod(write_or_fail))
    elif component == "checkpoints":
        save = CheckpointStore.save_async

        async def save_or_fail(self):
            if armed.is_set():
                raise InjectedError("injected into checkpoints")
            await save(self)

        monkeypatch.setattr(CheckpointStore, "save_async", save_or_fail)
    elif component == "api":
        serve_forever = asyncio.Server.serve_forever

        async def serve_until_armed(self):
            while not armed.is_set():
                await asyncio.sleep(0.02)
            raise InjectedError("injected into api")

        assert serve_forever is not None
        monkeypatch.setattr(asyncio.Server, "serve_forever", serve_until_armed)


NAMES = {
    "source": "source 'files'",
    "transform": "transform 'keep'",
    "buffer": "buffer of 'out'",
    "sink": "sink 'out'",
    "checkpoints": "checkpoint saver",
    "api": "api server",
}


@pytest.mark.parametrize("component", list(NAMES))
def test_a_component_task_that_dies_is_loud_and_fatal(tmp_path, monkeypatch, caplog, component):
    """Each task killed by an injected exception: its error logged once with the traceback,
    /health failing, exit code 1, the checkpoint at the last delivered record."""
    armed = threading.Event()
    _inject(monkeypatch, component, armed)
    port = free_port()
    log = tmp_path / "logs" / "app-json.log"
    cfg = _kill_config(tmp_path, port)
    log.write_bytes(docker_lines([f"m{i}" for i in range(200)]))
    caplog.set_level(logging.INFO)
    health_seen: list[int] = []
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 200, what="the first 200 records")
        wait_until(lambda: _checkpoint(tmp_path) == log.stat().st_size, what="their checkpoint")
        assert _status(f"http://127.0.0.1:{port}/health") == 200
        armed.set()
        with open(log, "ab") as f:
            f.write(docker_lines([f"m{i}" for i in range(200, 400)], start_ns=200))
        deadline = time.monotonic() + 60
        while bg.thread.is_alive() and time.monotonic() < deadline:
            health_seen.append(_status(f"http://127.0.0.1:{port}/health"))
            bg.thread.join(0.05)
        assert not bg.thread.is_alive(), f"still running a minute after its {component} died"
        rc = bg.rc
    assert rc == 1
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert NAMES[component] in loud[0].getMessage() and isinstance(loud[0].exc_info[1], InjectedError)
    fatal = [r for r in caplog.records if "stopping (exit code 1)" in r.getMessage()]
    assert len(fatal) == 1 and NAMES[component] in fatal[0].getMessage()
    ok, detail = bg.telemetry.health()
    assert (
        not ok
        and detail["pipeline"].startswith(f"failing: {NAMES[component]}")
        and "InjectedError" in detail["pipeline"]
    )
    if component == "sink":  # restarted until restart.max_elapsed, then fatal; the drain waits on it
        assert 503 in health_seen
        assert sum("restarting it in" in r.getMessage() for r in caplog.records) >= 2
    # the checkpoint is exactly at the end of the last record delivered, which are a prefix
    delivered = [d["message"] for d in read_ndjson(tmp_path / "out.ndjson")]
    assert delivered == [f"m{i}" for i in range(len(delivered))] and len(delivered) >= 200
    ends = list(itertools.accumulate(len(line) + 1 for line in log.read_bytes().split(b"\n")[:-1]))
    assert _checkpoint(tmp_path) == ends[len(delivered) - 1]


def _checkpoint(tmp_path) -> int:
    try:
        doc = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())
    except (AssertionError, FileNotFoundError, orjson.JSONDecodeError):
        return -1
    return sum(int(v["offset"]) for v in doc["sources"].get("files", {}).values())


def test_stopped_with_records_undelivered_exits_3(tmp_path, monkeypatch, caplog):
    """A sink crashing on every write, then SIGTERM: nothing was delivered, so the exit code is 3
    (it was 0: the crashed sink's records were forgotten, the drain found an empty buffer)."""
    armed = threading.Event()
    armed.set()
    _inject(monkeypatch, "sink", armed)
    cfg = _kill_config(tmp_path, free_port())
    cfg["restart"] = {"retry": {"initial_backoff": 0.05, "max_backoff": 0.2}}  # restarted for as long as it takes
    cfg["shutdown_timeout"] = 1
    (tmp_path / "logs" / "app-json.log").write_bytes(docker_lines([f"m{i}" for i in range(50)]))
    caplog.set_level(logging.INFO)
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: "restarting it in" in caplog.text, what="a crash")
        rc = bg.stop()
    assert rc == 3
    assert read_ndjson(tmp_path / "out.ndjson") == []
    assert _checkpoint(tmp_path) in (-1, 0)
    assert "50 record(s) not delivered" in caplog.text


def test_a_crashed_sink_is_restarted_and_given_what_it_held(tmp_path, monkeypatch):
    """One crash mid-stream: the next sink gets the batches the crashed one held; every record
    arrives, the checkpoint reaches the end, exit 0 (they were orphaned: the checkpoint stuck)."""
    armed = threading.Event()
    from collector.sinks.file import FileSink

    write = FileSink._write

    def fail_once(fd, data, sync):
        if armed.is_set():
            armed.clear()
            raise InjectedError("one crash")
        write(fd, data, sync)

    monkeypatch.setattr(FileSink, "_write", staticmethod(fail_once))
    cfg = _kill_config(tmp_path, free_port())
    log = tmp_path / "logs" / "app-json.log"
    log.write_bytes(docker_lines([f"m{i}" for i in range(100)]))
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 100)
        armed.set()
        with open(log, "ab") as f:
            f.write(docker_lines([f"m{i}" for i in range(100, 300)], start_ns=100))
        wait_until(lambda: _checkpoint(tmp_path) == log.stat().st_size, what="the checkpoint at the end")
        assert not armed.is_set()
        assert bg.stop() == 0
    assert sorted(d["message"] for d in read_ndjson(tmp_path / "out.ndjson")) == sorted(f"m{i}" for i in range(300))
