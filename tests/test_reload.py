"""Reloading a running `collector run -c FILE` (`collector reload`, SIGHUP): a new sink takes over
with nothing lost and nothing duplicated while records keep coming; an invalid config is refused
with its reason and the running pipeline keeps delivering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from collector.buffers.disk import inspect
from tests.helpers import (
    Collector,
    docker_line,
    file_pipeline,
    free_port,
    read_ndjson,
    run_cli,
    wait_progressing,
    wait_until,
)
from tests.test_telemetry import api_url


class Writer(threading.Thread):
    """Appends ``seq N`` lines to a json-file log, a few at a time, until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.written = 0
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.wait(0.01):
            with open(self.path, "ab") as f:
                f.write(b"".join(docker_line(f"seq {self.written + i}\n") for i in range(20)))
            self.written += 20

    def stop(self) -> int:
        self.halt.set()
        self.join()
        return self.written


def seqs(path: Path) -> list[int]:
    return [int(d["message"].split()[1]) for d in read_ndjson(path)]


def test_reload_moves_to_a_new_sink_losing_and_duplicating_nothing_and_refuses_an_invalid_config(tmp_path):
    logs, state = tmp_path / "logs", tmp_path / "state"
    logs.mkdir()
    (logs / "app-json.log").write_bytes(b"")
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    config = tmp_path / "pipeline.yaml"

    def write_config(out: Path, **settings: object) -> None:
        doc = file_pipeline([str(logs / "*-json.log")], out, state)
        doc["api"] = {"listen": "tcp://127.0.0.1:0"}
        config.write_text(yaml.safe_dump({**doc, **settings}))

    write_config(first)
    col = Collector("run", "-c", str(config))
    with col.start(tmp_path / "err.log"):
        api_url(state, col)
        tap_out, tap_err = tmp_path / "tap.out", tmp_path / "tap.err"
        with open(tap_out, "wb") as o, open(tap_err, "wb") as e:
            tap = subprocess.Popen(
                [sys.executable, "-m", "collector", "tap", "--data-dir", str(state), "--rate", "0"], stdout=o, stderr=e
            )
        wait_until(lambda: "tapping out (sink)" in tap_err.read_text(), what="the tap to attach")
        writer = Writer(logs / "app-json.log")
        wait_until(lambda: len(read_ndjson(first)) >= 500, what="records in the first output")
        # a valid new config: another file, only the sink changed: restarted in place
        write_config(second)
        r = run_cli("reload", "-c", str(config))
        assert r.returncode == 0 and f"(pid {col.proc.pid})" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: "reloaded in place: sink 'out' restarted" in col.stderr(), what="the reload")
        assert "reloading in place: restarting sink 'out'; everything else keeps running" in col.stderr()
        wait_until(lambda: len(read_ndjson(second)) >= 500, what="records in the second output")
        assert "reloading its config" not in tap_err.read_text()  # the tap stayed attached to the same pipeline
        # an invalid one: refused with its reason, the running pipeline goes on
        config.write_text(config.read_text().replace("type: file", "type: nope"))
        os.kill(col.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in col.stderr(), what="the refusal")
        refusal = next(line for line in col.stderr().splitlines() if "reload refused" in line)
        assert "nope" in refusal and str(config) in refusal, refusal
        r = run_cli("reload", "-c", str(config))  # checked before anything is signalled
        assert r.returncode == 2 and "not signalled" in r.stderr and "nope" in r.stderr, r.stderr
        delivered = len(read_ndjson(second))
        wait_until(lambda: len(read_ndjson(second)) >= delivered + 500, what="records after the refusal")
        # a pipeline setting changed: the whole pipeline is replaced (drained, then started again)
        write_config(second, shutdown_timeout=20)
        os.kill(col.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded: the old pipeline delivered" in col.stderr(), what="the whole reload")
        assert "reloading the whole pipeline (pipeline settings changed)" in col.stderr()
        delivered = len(read_ndjson(second))
        wait_until(lambda: len(read_ndjson(second)) >= delivered + 500, what="records after the whole reload")
        total = writer.stop()
        wait_progressing(lambda: len(read_ndjson(first)) + len(read_ndjson(second)), total, what="every record")
        assert col.stop() == 0, col.stderr()
        assert tap.wait(60) == 0, tap_err.read_text()
    a, b = seqs(first), seqs(second)
    assert sorted(a + b) == list(range(total))  # nothing lost, nothing twice
    assert a == list(range(len(a))) and b == list(range(len(a), total))  # the old one drained, then the new one
    assert "Traceback" not in col.stderr()
    # the tap followed the sink across the reload: records of both pipelines, none twice
    tapped = [int(d["message"].split()[1]) for d in read_ndjson(tap_out)]
    assert "reloading its config; tapping the new pipeline" in tap_err.read_text()
    assert tapped == sorted(set(tapped)) and tapped[0] < len(a) <= tapped[-1], tap_err.read_text()


def test_sighup_without_a_config_file_changes_nothing(tmp_path):
    logs, state, out = tmp_path / "logs", tmp_path / "state", tmp_path / "out.ndjson"
    logs.mkdir()
    (logs / "app-json.log").write_bytes(docker_line("one\n"))
    col = Collector("tail", "--path", str(logs / "*-json.log"), "--data-dir", str(state), "-o", f"file:{out}")
    with col.start(tmp_path / "err.log"):
        wait_until(lambda: len(read_ndjson(out)) == 1, what="the first record")
        r = run_cli("reload", "--data-dir", str(state))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "nothing to reload" in col.stderr(), what="the answer to SIGHUP")
        with open(logs / "app-json.log", "ab") as f:
            f.write(docker_line("two\n"))
        wait_until(lambda: len(read_ndjson(out)) == 2, what="the second record")
        assert col.stop() == 0
    r = run_cli("reload", "--data-dir", str(state))
    assert r.returncode == 1 and "no collector runs on the data directory" in r.stderr, r.stderr


def test_a_disk_buffer_no_sink_reads_is_said_once_with_its_records_at_reload_and_at_start(tmp_path):
    logs, state, config = tmp_path / "logs", tmp_path / "state", tmp_path / "pipeline.yaml"
    logs.mkdir()
    (logs / "app-json.log").write_bytes(b"".join(docker_line(f"seq {i}\n") for i in range(5)))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: what the sink holds stays in its disk buffer

    def write_config(sink: str, **settings: object) -> None:
        doc = {
            "data_dir": str(state),
            "shutdown_timeout": 1,
            "sources": {"files": {"type": "docker_json_file", "paths": [str(logs / "*-json.log")]}},
            "sinks": {
                sink: {"type": "elasticsearch", "inputs": ["files"], "hosts": [dead], "buffer": {"type": "disk"}}
            },
        }
        config.write_text(yaml.safe_dump({**doc, **settings}))

    said = "disk buffer {} holds 5 record(s)"
    orphan = state / "buffers" / "es1"
    write_config("es1")
    col = Collector("run", "-c", str(config))
    with col.start(tmp_path / "err.log"):
        wait_until(lambda: orphan.is_dir() and inspect(orphan)[1] == 5, what="the records in es1's disk buffer")
        assert "no sink reads" not in col.stderr()
        write_config("es2")  # renamed: es1's buffer is read by nobody from now on
        os.kill(col.proc.pid, signal.SIGHUP)
        wait_until(lambda: said.format(orphan) in col.stderr(), what="the orphan buffer said at the reload")
        line = next(x for x in col.stderr().splitlines() if said.format(orphan) in x)
        assert "no sink named 'es1'" in line and "old name back" in line and "delete the directory" in line, line
        write_config("es2", shutdown_timeout=2)
        os.kill(col.proc.pid, signal.SIGHUP)
        wait_until(lambda: col.stderr().count("reloaded: the old pipeline") == 2, what="the second reload")
        assert col.stderr().count(said.format(orphan)) == 1  # once per directory
        col.stop()
    col = Collector("run", "-c", str(config))
    with col.start(tmp_path / "err2.log"):
        wait_until(lambda: said.format(orphan) in col.stderr(), what="the orphan buffer said at start")
        col.stop()


def test_a_reload_changing_a_transform_and_a_source_restarts_them_in_place_losing_and_duplicating_nothing(tmp_path):
    logs, state, out = tmp_path / "logs", tmp_path / "state", tmp_path / "out.ndjson"
    logs.mkdir()
    (logs / "app-json.log").write_bytes(b"")
    config = tmp_path / "pipeline.yaml"

    def write_config(timeout: float, *more_paths: str) -> None:
        doc = file_pipeline([str(logs / "*-json.log"), *more_paths], out, state)
        # multiline holds each record until the next one begins: one is held whenever the reload comes
        doc["transforms"] = {
            "joined": {
                "type": "multiline",
                "inputs": ["files"],
                "mode": "pattern",
                "start_pattern": "^seq",
                "timeout": timeout,
            }
        }
        doc["sinks"]["out"]["inputs"] = ["joined"]
        config.write_text(yaml.safe_dump(doc))

    write_config(0.5)
    col = Collector("run", "-c", str(config))
    with col.start(tmp_path / "err.log"):
        writer = Writer(logs / "app-json.log")
        wait_until(lambda: len(read_ndjson(out)) >= 500, what="records before the reload")
        write_config(0.3, str(tmp_path / "more" / "*-json.log"))
        os.kill(col.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reloaded in place" in col.stderr(), what="the reload")
        done = next(x for x in col.stderr().splitlines() if "reloaded in place" in x)
        assert "source 'files'" in done and "transform 'joined'" in done and "sink" not in done, done
        delivered = len(read_ndjson(out))
        wait_until(lambda: len(read_ndjson(out)) >= delivered + 500, what="records after the reload")
        total = writer.stop()
        wait_progressing(lambda: len(read_ndjson(out)), total, what="every record")
        assert col.stop() == 0, col.stderr()
    assert seqs(out) == list(range(total))  # in order, none lost, none twice
    assert "Traceback" not in col.stderr()
