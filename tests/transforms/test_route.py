"""The ``route`` transform in a real pipeline: json-file logs in, files out.

A batch goes to every route whose tag pattern matches (its acknowledgement waits for every one
of them), one matching none to ``<name>._unmatched`` when something reads it, else it is
dropped, counted (``reason="unmatched"``) and finalized.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import ConfigError, validate_config
from tests.helpers import BackgroundPipeline, checkpoint_file, read_ndjson, run_once_counted, wait_until
from tests.transforms.test_filter import API, DB, WEB, offsets, three_containers


def routed(tmp_path: Path, outs: dict[str, str], sink_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``outs``: sink name -> the route output it reads."""
    return {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
        "transforms": {"r": {"type": "route", "inputs": ["files"], "routes": {"web": "aaaaaaaaaaaa", "a_any": "a*"}}},
        "sinks": {
            name: {
                "type": "file",
                "inputs": [port],
                "path": str(tmp_path / f"{name}.ndjson"),
                "fsync": "never",
                **(sink_extra or {}).get(name, {}),
            }
            for name, port in outs.items()
        },
    }


def got(tmp_path: Path, name: str) -> list[str]:
    return [r["message"] for r in read_ndjson(tmp_path / f"{name}.ndjson")]


def test_every_matching_route_gets_the_batch_and_the_unmatched_have_their_own_output(tmp_path):
    three_containers(tmp_path)
    cfg = routed(tmp_path, {"web": "r.web", "a_any": "r.a_any", "rest": "r._unmatched"})
    rc, tel = run_once_counted(cfg)
    assert rc == 0
    assert got(tmp_path, "web") == [f"web {i}" for i in range(5)]
    assert sorted(got(tmp_path, "a_any")) == sorted([f"web {i}" for i in range(5)] + [f"api {i}" for i in range(3)])
    assert got(tmp_path, "rest") == [f"db {i}" for i in range(4)]
    assert tel.value("collector_events_dropped_total", component="r") == 0


def test_unmatched_batches_nobody_reads_are_dropped_counted_and_finalized(tmp_path):
    logs = three_containers(tmp_path)
    rc, tel = run_once_counted(routed(tmp_path, {"web": "r.web"}))
    assert rc == 0
    assert got(tmp_path, "web") == [f"web {i}" for i in range(5)]
    # api matched a route nobody reads: it is not "unmatched", so not counted there
    assert tel.value("collector_events_dropped_total", component="r", reason="unmatched") == 4
    assert offsets(tmp_path) == {cid: log.stat().st_size for cid, log in logs.items()}  # all finalized
    rc, tel = run_once_counted(routed(tmp_path, {"web": "r.web"}))
    assert rc == 0 and tel.value("collector_events_dropped_total", component="r", reason="unmatched") == 0
    assert len(got(tmp_path, "web")) == 5  # nothing read twice


def _drain(fd: int, into: bytearray, stop: threading.Event) -> None:
    import time

    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            if stop.is_set():
                return
            time.sleep(0.01)  # (polling a non-blocking pipe)
            continue
        if data:
            into.extend(data)
        elif stop.is_set():
            return


def test_a_batch_on_two_routes_is_finalized_only_when_both_delivered(tmp_path):
    """web's lines go to a file and to a pipe nobody reads: the file has them, yet the checkpoint
    stays at the start of web's file until the pipe's sink has written them too."""
    logs = three_containers(tmp_path)
    fifo = tmp_path / "a_any.ndjson"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read (yet)
    big = {"a_any": {"buffer": {"max_events": 10}}}
    with open(logs[WEB], "ab") as f:  # ~600 KB for the pipe (64 KB): its sink's write blocks
        from tests.helpers import docker_line

        for i in range(6):
            f.write(docker_line(f"big {i} " + "x" * 100_000 + "\n", "stdout", f"2024-05-01T12:00:01.{i:09d}Z"))
    cfg = routed(tmp_path, {"web": "r.web", "a_any": "r.a_any"}, big)
    cfg["shutdown_timeout"] = 1
    got_pipe = bytearray()
    stop = threading.Event()
    try:
        with BackgroundPipeline(cfg) as bg:
            wait_until(lambda: len(got(tmp_path, "web")) == 11, what="web's lines in its file")
            assert bg.stop() == 3  # stopped with records undelivered (the pipe)
        cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["files"]
        by_cid = {Path(v["live"]).parent.name: v["offset"] for v in cp.values()}
        assert by_cid.get(WEB, 0) == 0, by_cid  # delivered to one route only: not finalized
        assert by_cid[DB] == logs[DB].stat().st_size  # (matched no route: finalized at once)
        reader = threading.Thread(target=_drain, args=(rfd, got_pipe, stop), daemon=True)
        reader.start()  # (the file sink's thread is still inside write(2): let it return)
        got_pipe.clear()
        with BackgroundPipeline(cfg) as bg:
            wait_until(lambda: offsets(tmp_path).get(WEB) == logs[WEB].stat().st_size, what="web finalized")
            wait_until(lambda: offsets(tmp_path).get(API) == logs[API].stat().st_size, what="api finalized")
            assert bg.stop() == 0
    finally:
        stop.set()
        os.close(rfd)
    # web's lines were read again after the restart (at least once), api's once
    assert got(tmp_path, "web")[:11] == [f"web {i}" for i in range(5)] + [f"big {i} " + "x" * 100_000 for i in range(6)]


@pytest.mark.parametrize(
    ("routes", "said"),
    [
        ({"_unmatched": "x"}, "reserved"),
        ({"a.b": "x"}, "contains a dot"),
        ({"web": "web}"}, "route 'web'"),
        ({}, "routes"),
    ],
)
def test_bad_routes_are_configuration_errors(routes, said):
    cfg = {
        "sources": {"f": {"type": "fluent_forward"}},
        "transforms": {"r": {"type": "route", "inputs": ["f"], "routes": routes}},
        "sinks": {"o": {"type": "console", "inputs": ["r._unmatched"]}},
    }
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert said in str(e.value), str(e.value)


def test_a_sink_reading_a_route_that_does_not_exist_is_a_configuration_error():
    cfg = {
        "sources": {"f": {"type": "fluent_forward"}},
        "transforms": {"r": {"type": "route", "inputs": ["f"], "routes": {"web": "web.**"}}},
        "sinks": {"o": {"type": "console", "inputs": ["r.db"]}},
    }
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert "input 'r.db' is not a source or transform" in str(e.value), str(e.value)
